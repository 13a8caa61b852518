from __future__ import annotations

from alembic import context

from agentledger.store.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=engine.dialect.name == "sqlite")
    context.run_migrations()
    # A migration that changes what the books keep (0003, 0008) asks for them to be rebuilt from the raw rows. That
    # runs here, once the upgrade has reached the head revision, in its one transaction: store.books is the head's
    # code, and its columns would not all exist yet in the middle of the upgrade. An upgrade that stops short of
    # head (tests, by hand) leaves them as they were: `agentledger rollups rebuild` once at head.
    # A migration that adds a kept table of its own asks for that one only (0015: run marks).
    at_head = context.get_context().get_current_revision() == context.script.get_current_head()
    marks = context.config.attributes.pop("rebuild_marks", False)
    if context.config.attributes.pop("rebuild_books", False) and at_head:
        from agentledger.store.books import rebuild

        rebuild(connection)  # run marks included
    elif marks and at_head:
        from agentledger.store.books import rebuild_marks

        rebuild_marks(connection)
