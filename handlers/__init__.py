"""The checkout example: what happens after `order.placed`.

`registry` is what `pgqueue worker --handlers handlers:registry` serves. Every handler is
idempotent through `pgqueue.once`, and leaves a visible row in the `shop` schema.
"""

from .checkout import SHOP_DDL, OrderPlaced, build_registry, setup_shop

registry = build_registry()

__all__ = ["SHOP_DDL", "OrderPlaced", "build_registry", "registry", "setup_shop"]
