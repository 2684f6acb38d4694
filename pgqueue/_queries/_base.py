"""``Area``: the base of every statement class, which fills the schema in once."""

from __future__ import annotations

from .._settings import quote_ident


class Area:
    """The statements of one area for one schema.

    Every UPPER_CASE ``str`` class attribute that names ``{s}`` is formatted once here with
    the quoted schema and stored under the same name on the instance, so a method reads
    ``self.CLAIM`` and asyncpg's statement cache sees one fixed text per statement. A statement
    without ``{s}`` (the schema-free ones, some holding literal braces) is used as written.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        s = quote_ident(schema)
        for cls in reversed(type(self).__mro__):
            for name, value in vars(cls).items():
                if name.isupper() and isinstance(value, str) and "{s}" in value:
                    setattr(self, name, value.format(s=s))
