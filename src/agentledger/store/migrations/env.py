from __future__ import annotations

from alembic import context

from agentledger.store.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=engine.dialect.name == "sqlite")
    context.run_migrations()
    # A migration that changes what the books keep (0003, 0008) asks for them to be rebuilt from the raw rows. That
    # runs here, at the head revision and in the upgrade's one transaction: store.books is the head's code, and its
    # columns would not all exist yet in the middle of the upgrade.
    if context.config.attributes.pop("rebuild_books", False):
        from agentledger.store.books import rebuild

        rebuild(connection)
