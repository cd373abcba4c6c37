# Driven by psycopg.rs: a Python service's use of Freshet over the Postgres protocol.
import datetime
import decimal
import sys

import psycopg

port = sys.argv[1]
with psycopg.connect(f"host=127.0.0.1 port={port} user=test dbname=freshet") as conn:
    # psycopg opens a transaction (BEGIN) before the first statement.
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, sensor VARCHAR, value DECIMAL(10, 2), at TIMESTAMP)"
        )
        at = datetime.datetime(2024, 5, 1, 12, 0)
        cur.executemany(
            "INSERT INTO readings VALUES (%s, %s, %s, %s)",
            [(i, f"s{i % 3}", decimal.Decimal(i) / 4, at + datetime.timedelta(minutes=i)) for i in range(30)],
        )
        cur.execute("SELECT count(*), sum(value) FROM readings WHERE sensor = %s", ("s1",))
        count, total = cur.fetchone()
        assert count == 10, count
        assert total == sum(decimal.Decimal(i) / 4 for i in range(1, 30, 3)), total
        cur.execute(
            "CREATE MATERIALIZED TABLE per_sensor FRESHNESS = INTERVAL '1' SECOND AS "
            "SELECT sensor, COUNT(*) AS n, MAX(at) AS latest FROM readings GROUP BY sensor"
        )
    conn.commit()

conn = psycopg.connect(f"host=127.0.0.1 port={port} user=test dbname=freshet", autocommit=True)
# Simple protocol, several statements in one string.
conn.execute("UPDATE readings SET sensor = 's9' WHERE id = 0; DELETE FROM readings WHERE id = 1")
# Fresh within a second on its own; a refresh makes it fresh now.
conn.execute("ALTER MATERIALIZED TABLE per_sensor REFRESH")
rows = conn.execute("SELECT sensor, n FROM per_sensor ORDER BY sensor").fetchall()
assert rows == [("s0", 9), ("s1", 9), ("s2", 10), ("s9", 1)], rows
# Prepared on the server after repeated use.
for i in range(6):
    row = conn.execute("SELECT sensor FROM readings WHERE id = %s", (i + 2,), prepare=True).fetchone()
    assert row == (f"s{(i + 2) % 3}",), row
# Typed values come back typed.
row = conn.execute("SELECT value, at FROM readings WHERE id = %s", (4,)).fetchone()
assert row == (decimal.Decimal("1.00"), datetime.datetime(2024, 5, 1, 12, 4)), row
try:
    conn.execute("SELECT * FROM nowhere WHERE a = %s", (1,))
    raise AssertionError("expected an error")
except psycopg.errors.UndefinedTable as e:
    assert e.sqlstate == "42P01"
print("ok")
