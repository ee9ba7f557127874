"""
Brokers: how broker requests reach the backend.

C{[broker] type} names one: C{file}, C{amqp}, or the dotted path of a factory
C{(settings, reactor) -> IBroker}.
"""
