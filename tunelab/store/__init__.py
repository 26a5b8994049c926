"""The server's store (SQLAlchemy; SQLite or PostgreSQL): keys, files, jobs, events, checkpoints."""
