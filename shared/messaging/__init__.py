"""The message bus: one home per concept.

`config` (the connection and security settings every client family reads), `codec` (events to
bytes and back), `producer` (a service's one aiokafka producer), `consumer` (the consumer loop:
group member or broadcast), `deadletters` (messages set aside), `admin` (topics) and `broker`
(the embedded broker, and waiting for any broker).
"""
