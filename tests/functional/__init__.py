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
