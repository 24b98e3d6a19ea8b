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

"""The lab: a real Nova cloud on one machine (``tools/run lab``).

Every service is a real process with its own log under
``<checkout>/.lab/<id>/``; compute hosts live in network, mount and UTS
namespaces of their own, so several labs (a developer's and a CI run's)
can run side by side on one machine.
"""
