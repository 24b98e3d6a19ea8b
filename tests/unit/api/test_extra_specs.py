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

import testtools

from nova.api.validation.extra_specs import validators
from nova import exception

from nova_multidest.api import extra_specs
from nova_multidest import vocabulary


class TestExtraSpecs(testtools.TestCase):
    """Through Nova's registry, as nova-api loads it from the entry point.

    Entry points resolve through sys.path, so this is the working tree's
    module.
    """

    def test_registered_through_entry_point(self):
        for validator in extra_specs.register():
            self.assertIs(validator, validators.VALIDATORS[validator.name])

    def test_valid_values(self):
        for value in ('1', '4', '16'):
            validators.validate(vocabulary.EXTRA_SPEC_DESTINATIONS, value)
        for value in ('star', 'chain'):
            validators.validate(vocabulary.EXTRA_SPEC_TOPOLOGY, value)

    def test_invalid_values(self):
        for name, value in ((vocabulary.EXTRA_SPEC_DESTINATIONS, '0'),
                            (vocabulary.EXTRA_SPEC_DESTINATIONS, '17'),
                            (vocabulary.EXTRA_SPEC_DESTINATIONS, 'two'),
                            (vocabulary.EXTRA_SPEC_TOPOLOGY, 'ring')):
            self.assertRaises(exception.ValidationError,
                              validators.validate, name, value)

    def test_unknown_spec_in_our_namespace(self):
        error = self.assertRaises(exception.ValidationError,
                                  validators.validate,
                                  'multidest:destination', '2')
        self.assertIn('multidest:destination', str(error))
