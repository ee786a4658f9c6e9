"""EventFlow consumers: the framework (`Consumer`, `consumer`, `Retry`, `Permanent`, `Delivery`), the
runner (`eventflow consume`) and the built-in audit, notify and analytics consumers.

Write your own in a module that exposes `CONSUMERS` (a list of `Consumer`, or a function taking
`(settings, redis)` and returning one) and run it with `eventflow consume --module your.module`.
"""

from consumers.base import Backoff, Consumer, Delivery, Permanent, Retry, consumer

__all__ = ["Backoff", "Consumer", "Delivery", "Permanent", "Retry", "consumer"]
