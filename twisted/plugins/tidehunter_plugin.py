"""Makes ``twistd tidehunter`` exist; the work lives in tidehunter_tx.service."""

from twisted.application.service import ServiceMaker

tidehunter = ServiceMaker(
    "tidehunter",
    "tidehunter_tx.service",
    "Stream an HTTP feed into a queue, a file or Redis with an exact limit.",
    "tidehunter",
)
