"""Alembic environment. Postroom runs migrations itself (`postroom db upgrade`, first use),
handing Alembic an open connection through `config.attributes["connection"]`."""

from alembic import context

from bot.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from sqlalchemy import create_engine

        url = config.get_main_option("sqlalchemy.url")
        assert url, "alembic runs with a connection from bot.db.engine, or with sqlalchemy.url set"
        with create_engine(url).connect() as conn:
            _run(conn)
            conn.commit()
        return
    _run(connection)


def _ours(obj, name, type_, reflected, compare_to) -> bool:
    # APScheduler creates and owns its job table; it is not part of our migrations.
    return not (type_ == "table" and name == "apscheduler_jobs")


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
