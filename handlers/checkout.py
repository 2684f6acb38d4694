"""Post-checkout work as pgqueue handlers: one `order.placed` event fans out to five of them.

Each handler simulates the latency of the service it calls (scaled by `delay_scale`, 0 in
tests) and records its effect in the same transaction as `pgqueue.once`, so a re-delivered
event never sends a second email or books a second shipment.
"""

from __future__ import annotations

import asyncio

import asyncpg
from pydantic import BaseModel, Field

import pgqueue

SHOP_DDL = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_email text NOT NULL,
    total_cents integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shop.emails (
    order_id bigint PRIMARY KEY, recipient text NOT NULL, sent_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS shop.shipments (
    order_id bigint PRIMARY KEY, warehouse text NOT NULL, booked_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS shop.analytics (
    order_id bigint PRIMARY KEY, revenue_cents integer NOT NULL,
    tracked_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS shop.crm_contacts (
    email text PRIMARY KEY, orders integer NOT NULL, synced_at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS shop.loyalty (
    order_id bigint PRIMARY KEY, points integer NOT NULL, awarded_at timestamptz DEFAULT now());
"""

# Seconds each call takes in real life (the demo shows what the customer would wait for).
LATENCY = {
    "send_confirmation_email": 1.0,
    "create_shipment": 0.8,
    "track_purchase": 0.2,
    "sync_crm": 1.5,
    "award_loyalty_points": 0.3,
}


class OrderPlaced(BaseModel):
    """The payload of `order.placed`."""

    order_id: int
    customer_email: str = Field(min_length=3)
    total_cents: int = Field(ge=0)


async def setup_shop(conn: asyncpg.Connection) -> None:
    """Create the example's business tables (idempotent)."""
    await conn.execute(SHOP_DDL)


async def _effect(ctx: pgqueue.Context, sql: str, *args: object) -> None:
    """Run `sql` once per (event, handler): the ledger row and the effect commit together."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await pgqueue.once(conn, ctx):
            await conn.execute(sql, *args)


def build_registry(delay_scale: float = 1.0) -> pgqueue.Registry:
    """The checkout handlers; `delay_scale` multiplies the simulated service latency."""
    registry = pgqueue.Registry()

    async def call_service(name: str) -> None:
        if delay_scale > 0:
            await asyncio.sleep(LATENCY[name] * delay_scale)

    @registry.on("order.placed")
    async def send_confirmation_email(order: OrderPlaced, ctx: pgqueue.Context) -> None:
        await call_service("send_confirmation_email")
        await _effect(
            ctx,
            "INSERT INTO shop.emails (order_id, recipient) VALUES ($1, $2)",
            order.order_id,
            order.customer_email,
        )

    @registry.on("order.placed")
    async def create_shipment(order: OrderPlaced, ctx: pgqueue.Context) -> None:
        await call_service("create_shipment")
        await _effect(
            ctx,
            "INSERT INTO shop.shipments (order_id, warehouse) VALUES ($1, $2)",
            order.order_id,
            "ams-1",
        )

    @registry.on("order.placed")
    async def track_purchase(order: OrderPlaced, ctx: pgqueue.Context) -> None:
        await call_service("track_purchase")
        await _effect(
            ctx,
            "INSERT INTO shop.analytics (order_id, revenue_cents) VALUES ($1, $2)",
            order.order_id,
            order.total_cents,
        )

    # The CRM's API times out now and then: the first attempt fails, the quick in-process
    # retry (policy wait 0.5 s) succeeds.
    @registry.on("order.placed", timeout=10.0)
    async def sync_crm(order: OrderPlaced, ctx: pgqueue.Context) -> None:
        await call_service("sync_crm")
        if ctx.attempt == 1:
            raise ConnectionError("CRM API timed out (simulated)")
        await _effect(
            ctx,
            "INSERT INTO shop.crm_contacts (email, orders) VALUES ($1, 1) "
            "ON CONFLICT (email) DO UPDATE SET orders = shop.crm_contacts.orders + 1",
            order.customer_email,
        )

    @registry.on("order.placed")
    async def award_loyalty_points(order: OrderPlaced, ctx: pgqueue.Context) -> None:
        await call_service("award_loyalty_points")
        await _effect(
            ctx,
            "INSERT INTO shop.loyalty (order_id, points) VALUES ($1, $2)",
            order.order_id,
            order.total_cents // 100,
        )

    return registry
