# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Nova's functional harness, on native threads as Nova 34 services run.

Nova chooses between eventlet and native threads once per process, before
anything imports eventlet (Nova's own imports pull it in through
futurist). Every module of this tier lives below this package, so its
``__init__`` is the one place that runs early enough. Set
OS_NOVA_DISABLE_EVENTLET_PATCHING=false to run the tier on eventlet.
"""

import os

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'true')

from nova import monkey_patch  # noqa: E402

monkey_patch.patch()
