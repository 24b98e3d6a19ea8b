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

"""Sphinx configuration of the nova-multidest guide.

The configuration and policy references are generated from the code
(oslo_config.sphinxext, oslo_policy.sphinxext), the release notes from
the repository by reno. The default theme: openstackdocstheme needs the
OpenStack docs infrastructure this project does not publish to.
"""

project = 'nova-multidest'
copyright = 'nova-multidest developers'
extensions = [
    'oslo_config.sphinxext',
    'oslo_policy.sphinxext',
    'reno.sphinxext',
]
exclude_patterns = []
html_theme = 'alabaster'
html_static_path = []
