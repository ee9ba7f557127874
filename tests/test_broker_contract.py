"""
The broker contract, run against every broker.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.brokers import BrokerContractTests, make_file, make_memory


class FileBrokerContractTests(BrokerContractTests, SynchronousTestCase):
    """
    L{fmq.brokers.file.FileBroker} keeps the broker contract.
    """

    def make(self):
        return make_file(self)


class MemoryBrokerContractTests(BrokerContractTests, SynchronousTestCase):
    """
    L{fmq.testing.MemoryBroker} keeps the broker contract.
    """

    def make(self):
        return make_memory(self)
