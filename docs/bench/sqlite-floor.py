"""The SQLite floor on this machine: the same per-event statements Conductor's decide issues for
an alarm that opens an incident (insert message, insert alarm, indexed select of open incidents,
insert incident, update alarm, insert job, insert decision), 1,000 events a transaction, WAL,
synchronous=NORMAL, through Python's sqlite3 module (the C library, one thread, no async hop)."""
import os, sqlite3, tempfile, time, uuid

N = 200_000
path = os.path.join(tempfile.mkdtemp(), "floor.db")
db = sqlite3.connect(path, isolation_level=None)
db.executescript("""
PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-65536;
CREATE TABLE messages (id INTEGER PRIMARY KEY, transport_id TEXT UNIQUE, body TEXT, received_ms INT);
CREATE TABLE alarms (id INTEGER PRIMARY KEY, event_id TEXT UNIQUE, message_id INT, account TEXT, event_ms INT, incident_id INT);
CREATE TABLE incidents (id INTEGER PRIMARY KEY, account TEXT, first_event_ms INT, last_event_ms INT, merged_into INT);
CREATE INDEX incidents_open ON incidents(account, last_event_ms) WHERE merged_into IS NULL;
CREATE TABLE jobs (id INTEGER PRIMARY KEY, incident_id INT, message_id INT);
CREATE TABLE decisions (message_id INTEGER PRIMARY KEY, decision TEXT, incident_id INT, job_id INT);
""")
body = '{"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change", "detail": {}}' * 4
start = time.perf_counter()
for b in range(0, N, 1000):
    db.execute("BEGIN IMMEDIATE")
    for i in range(b, b + 1000):
        t = i * 60_000
        acct = f"{i % 500:012d}"
        mid = db.execute("INSERT INTO messages (transport_id, body, received_ms) VALUES (?, ?, ?) RETURNING id", (str(uuid.uuid4()), body, t)).fetchone()[0]
        aid = db.execute("INSERT INTO alarms (event_id, message_id, account, event_ms) VALUES (?, ?, ?, ?) RETURNING id", (str(uuid.uuid4()), mid, acct, t)).fetchone()[0]
        db.execute("SELECT id FROM incidents WHERE account = ? AND merged_into IS NULL AND last_event_ms >= ? AND first_event_ms <= ?", (acct, t - 3_600_000, t + 3_600_000)).fetchall()
        inc = db.execute("INSERT INTO incidents (account, first_event_ms, last_event_ms) VALUES (?, ?, ?) RETURNING id", (acct, t, t)).fetchone()[0]
        db.execute("UPDATE alarms SET incident_id = ? WHERE id = ?", (inc, aid))
        job = db.execute("INSERT INTO jobs (incident_id, message_id) VALUES (?, ?) RETURNING id", (inc, mid)).fetchone()[0]
        db.execute("INSERT INTO decisions VALUES (?, 'spawn', ?, ?)", (mid, inc, job))
    db.execute("COMMIT")
secs = time.perf_counter() - start
print(f"sqlite floor (python sqlite3, 7 statements/event): {N} events {secs:.2f} s {N / secs:.0f} events/s")
