//! A write-behind [`Store`] for replays on SQLite.
//!
//! A replay commits many messages in one transaction, and on SQLite that transaction holds the
//! only write lock, so nothing else changes the tables while it runs. [`WriteBehind::load`]
//! therefore reads, in a handful of `IN (...)` queries, every row the batch's messages can
//! touch (their transport ids, ticket keys, alarm event ids, and the open incidents of their
//! accounts within the policy's reach of their event times). The shared decide code then runs
//! against that state in memory, and [`WriteBehind::flush`] writes the batch's new and changed
//! rows back with multi-row statements before the caller commits.
//!
//! Row ids are assigned here, continuing from each table's largest id, exactly as SQLite would
//! assign them (the tables use `INTEGER PRIMARY KEY` without `AUTOINCREMENT`). A call for a key
//! that `load` was not told about is an error rather than a guess, so a misuse cannot silently
//! decide against partial state. If anything fails, the caller's transaction rolls back whole.

use std::collections::{HashMap, HashSet};

use std::collections::VecDeque;

use sqlx::{Database, QueryBuilder};

use crate::{
    db::Tx,
    error::Error,
    scheduling::domain::{
        Alarm, AlarmState, Decision, Ingested, Message, Rejection, SubjectKind, Ticket,
    },
    scheduling::policy::{IncidentSpan, Policy},
    scheduling::store::{State, Store},
};

/// Runs `$body` once per backend, with `$c` the transaction's connection and `$db` the
/// backend's type: one query text, built with `QueryBuilder::<$db>`, serves both.
macro_rules! per_backend {
    ($tx:expr, |$c:ident, $db:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                #[allow(clippy::upper_case_acronyms)]
                type $db = sqlx::Sqlite;
                let $c = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                #[allow(clippy::upper_case_acronyms)]
                type $db = sqlx::Postgres;
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// Rows per multi-row statement: the widest row (decisions) binds 12 values, well under
/// SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 1000;

/// One message of a batch, as [`WriteBehind::load`] needs to see it.
pub struct Planned<'a> {
    /// The stored message, for a batch of stored messages ([`WriteBehind::load_stored`]).
    pub message_id: Option<i64>,
    pub transport_id: &'a str,
    /// The body and its bytes (when not UTF-8), to tell a redelivery from a reused id.
    pub body: &'a str,
    pub raw: Option<&'a [u8]>,
    pub parsed: &'a Result<Message, Rejection>,
}

struct NewMessage {
    id: i64,
    transport_id: String,
    source: String,
    body: String,
    raw: Option<Vec<u8>>,
    reuses: Option<i64>,
    received_ms: i64,
    deliveries: i64,
    last_delivered_ms: i64,
}

#[derive(Clone)]
struct KnownMessage {
    id: i64,
    /// As stored: a delivery with another body is no redelivery.
    body: String,
    /// Deliveries added by this batch to a row stored before it.
    added: i64,
    last_delivered_ms: i64,
}

struct NewTicket {
    key: String,
    jira_id: Option<String>,
    project: Option<String>,
    summary: Option<String>,
    first_message_id: i64,
    first_seen_ms: i64,
}

struct NewAlarm {
    id: i64,
    event_id: String,
    message_id: i64,
    account: String,
    alarm_name: String,
    state: &'static str,
    event_ms: i64,
    incident_id: Option<i64>,
    original_incident_id: Option<i64>,
}

#[derive(Clone)]
struct IncidentState {
    id: i64,
    account: String,
    alarm_name: Option<String>,
    has_job: bool,
    first_ms: i64,
    last_ms: i64,
    alarm_count: i64,
    opened_by: i64,
    opened_ms: i64,
    merged: Option<(i64, i64, i64)>,
    /// Created by this batch (INSERT) rather than loaded (UPDATE if `dirty`).
    new: bool,
    dirty: bool,
}

struct NewJob {
    id: i64,
    kind: &'static str,
    ticket_key: Option<String>,
    incident_id: Option<i64>,
    message_id: i64,
    ms: i64,
}

/// Where a batch's new incidents and jobs get their ids.
///
/// On SQLite, after the table's largest id (the write lock keeps it the largest). On
/// Postgres other transactions insert meanwhile, so ids come from the tables' sequences: a
/// first pass decides with provisional ids above every stored one ([`PROVISIONAL`]) to count
/// what the batch needs, and a second pass decides again, the same way, with exactly that
/// many ids drawn ([`WriteBehind::load_stored`]).
enum Ids {
    Next(i64),
    Drawn(VecDeque<i64>),
}

/// The ids a second pass on Postgres numbers its new incidents and jobs with
/// ([`WriteBehind::draw`]); the default is a counting pass's (none drawn yet).
pub struct DrawnIds {
    counting: bool,
    incidents: VecDeque<i64>,
    jobs: VecDeque<i64>,
}

impl Default for DrawnIds {
    fn default() -> Self {
        DrawnIds {
            counting: true,
            incidents: VecDeque::new(),
            jobs: VecDeque::new(),
        }
    }
}

/// The decision each of the stored messages `ids` already has, read with their rows locked on
/// Postgres (a duplicated task, another replica: whoever decides a message holds its row).
async fn stored_decisions(
    tx: &mut Tx,
    ids: &[i64],
) -> Result<HashMap<i64, Option<Decision>>, Error> {
    const SQLITE: &str =
        "SELECT d.decision, d.kind, d.ticket_key, d.account, d.incident_id, d.job_id,
            d.duplicate_of, d.merged_incident_ids, d.reason, m.id
        FROM messages m LEFT JOIN decisions d ON d.message_id = m.id
        WHERE m.id IN (SELECT value FROM json_each($1))";
    const POSTGRES: &str =
        "SELECT d.decision, d.kind, d.ticket_key, d.account, d.incident_id, d.job_id,
            d.duplicate_of, d.merged_incident_ids, d.reason, m.id
        FROM messages m LEFT JOIN decisions d ON d.message_id = m.id
        WHERE m.id = ANY(ARRAY(SELECT json_array_elements_text($1::json)::bigint))
        ORDER BY m.id FOR UPDATE OF m";
    use sqlx::Row;
    let ids_json = serde_json::to_string(ids).expect("ids serialise");
    let mut out = HashMap::with_capacity(ids.len());
    let sql = match tx {
        Tx::Sqlite(_) => SQLITE,
        Tx::Postgres(_) => POSTGRES,
    };
    crate::with_conn!(&mut *tx, |c| {
        let rows = sqlx::query(sql).bind(&ids_json).fetch_all(&mut *c).await?;
        for r in &rows {
            let id: i64 = r.try_get(9)?;
            let decided = match r.try_get::<Option<String>, _>(0)? {
                Some(_) => Some(crate::scheduling::store::sql::decision_from_row(r)?),
                None => None,
            };
            out.insert(id, decided);
        }
    });
    Ok(out)
}

/// The first provisional id of a counting pass: above any id a table will reach.
const PROVISIONAL: i64 = 1 << 52;

impl Ids {
    fn take(&mut self, what: &str) -> Result<i64, Error> {
        match self {
            Ids::Next(n) => {
                *n += 1;
                Ok(*n - 1)
            }
            Ids::Drawn(ids) => ids.pop_front().ok_or_else(|| {
                Error::Corrupt(format!(
                    "the batch needed more {what} ids than its first pass counted"
                ))
            }),
        }
    }

    /// How many a counting pass has handed out.
    fn counted(&self) -> i64 {
        match self {
            Ids::Next(n) => n - PROVISIONAL,
            Ids::Drawn(_) => 0,
        }
    }
}

/// The state one batch reads and the rows it writes; see the module docs.
pub struct WriteBehind<'t> {
    tx: &'t mut Tx,
    message_base: i64,
    next_message: i64,
    incident_ids: Ids,
    next_alarm: i64,
    job_ids: Ids,
    /// For a batch of stored messages: the decision each already has (None: none yet), read
    /// with the messages' row locks.
    stored_decisions: Option<HashMap<i64, Option<Decision>>>,
    loaded_transport_ids: HashSet<String>,
    loaded_ticket_keys: HashSet<String>,
    loaded_event_ids: HashSet<String>,
    /// Per account, the event-time ranges whose open incidents were loaded.
    loaded_ranges: HashMap<String, Vec<(i64, i64)>>,
    known_messages: HashMap<String, KnownMessage>,
    new_messages: Vec<NewMessage>,
    new_message_index: HashMap<String, usize>,
    tickets: HashMap<String, (i64, Option<i64>)>,
    new_tickets: Vec<NewTicket>,
    /// Event id to (first message, alarm row id or 0 for a loaded row, incident).
    alarms: HashMap<String, (i64, i64, Option<i64>)>,
    new_alarms: Vec<NewAlarm>,
    alarm_base: i64,
    incidents: HashMap<i64, IncidentState>,
    open_by_account: HashMap<String, Vec<i64>>,
    /// Alarm moves of merges, replayed in order against rows stored before the batch.
    moves: Vec<(i64, i64)>,
    jobs: Vec<NewJob>,
    decisions: Vec<(i64, Decision, String, i64)>,
    decided: HashMap<i64, usize>,
    rejected: Vec<(i64, String, i64)>,
}

/// Merges overlapping ranges.
fn coalesce(mut spans: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    spans.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(spans.len());
    for (lo, hi) in spans {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn in_list<'a, DB: Database>(qb: &mut QueryBuilder<DB>, keys: impl IntoIterator<Item = &'a String>)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for k in keys {
        sep.push_bind(k.clone());
    }
    sep.push_unseparated(")");
}

/// Loads the stored messages of `ids` into `known`.
async fn load_known(
    tx: &mut Tx,
    ids: &[String],
    known: &mut HashMap<String, KnownMessage>,
) -> Result<(), Error> {
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(String, i64, String)> = per_backend!(&mut *tx, |c, DB| {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT transport_id, id, body FROM messages WHERE transport_id IN ",
            );
            in_list(&mut qb, chunk.iter());
            qb.build_query_as().fetch_all(&mut *c).await?
        });
        for (t, id, body) in rows {
            known.insert(
                t,
                KnownMessage {
                    id,
                    body,
                    added: 0,
                    last_delivered_ms: 0,
                },
            );
        }
    }
    Ok(())
}

/// The keys a batch can touch, gathered before anything is loaded.
#[derive(Default)]
struct Wanted<'b> {
    transport_ids: HashSet<String>,
    /// Transport ids that come twice in the batch.
    repeated: HashSet<&'b str>,
    ticket_keys: HashSet<String>,
    event_ids: HashSet<String>,
    /// Each ALARM event's (transport id, event id, account, the span its incidents may lie in).
    alarm_ranges: Vec<AlarmRange<'b>>,
}

type AlarmRange<'b> = (&'b str, &'b str, &'b str, (i64, i64));

impl<'b> Wanted<'b> {
    fn of(batch: &'b [Planned<'b>], policy: &Policy) -> Wanted<'b> {
        let mut w = Wanted::default();
        for p in batch {
            if !w.transport_ids.insert(p.transport_id.to_owned()) {
                w.repeated.insert(p.transport_id);
            }
            match p.parsed {
                Ok(Message::Ticket(t)) => {
                    w.ticket_keys.insert(t.key.clone());
                }
                Ok(Message::Alarm(a)) => {
                    w.event_ids.insert(a.event_id.clone());
                    if a.state == AlarmState::Alarm {
                        w.alarm_ranges.push((
                            p.transport_id,
                            &a.event_id,
                            &a.account,
                            policy.lookup_range(a.event_ms),
                        ));
                    }
                }
                Err(_) => {}
            }
        }
        w
    }
}

/// The highest id of each table the batch adds rows to: its new rows are numbered after them.
struct MaxIds {
    message: i64,
    incident: i64,
    alarm: i64,
    job: i64,
}

impl MaxIds {
    async fn read(conn: &mut sqlx::SqliteConnection) -> Result<MaxIds, Error> {
        let (message, incident, alarm, job) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM messages),
                    (SELECT COALESCE(MAX(id), 0) FROM incidents),
                    (SELECT COALESCE(MAX(id), 0) FROM alarms),
                    (SELECT COALESCE(MAX(id), 0) FROM agent_jobs)",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(MaxIds {
            message,
            incident,
            alarm,
            job,
        })
    }
}

/// The stored messages of the batch's transport ids, and of the derived ids a transport id
/// seen before would be stored under if it came back with another body. Returns them and
/// every transport id looked up.
async fn load_messages(
    tx: &mut Tx,
    batch: &[Planned<'_>],
    mut transport_ids: HashSet<String>,
    repeated: &HashSet<&str>,
) -> Result<(HashMap<String, KnownMessage>, HashSet<String>), Error> {
    let mut known = HashMap::new();
    let ids: Vec<String> = transport_ids.iter().cloned().collect();
    load_known(tx, &ids, &mut known).await?;
    let derived: Vec<String> = batch
        .iter()
        .filter(|p| known.contains_key(p.transport_id) || repeated.contains(p.transport_id))
        .map(|p| crate::scheduling::domain::reused_transport_id(p.transport_id, p.body, p.raw))
        .filter(|d| !transport_ids.contains(d))
        .collect();
    load_known(tx, &derived, &mut known).await?;
    transport_ids.extend(derived);
    Ok((known, transport_ids))
}

/// The stored tickets among `keys`: each one's first message and its job.
async fn load_tickets(
    tx: &mut Tx,
    keys: &HashSet<String>,
) -> Result<HashMap<String, (i64, Option<i64>)>, Error> {
    let mut tickets = HashMap::new();
    let keys: Vec<&String> = keys.iter().collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(String, i64, Option<i64>)> = per_backend!(&mut *tx, |c, DB| {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT t.key, t.first_message_id, j.id FROM tickets t
                LEFT JOIN agent_jobs j ON j.ticket_key = t.key WHERE t.key IN ",
            );
            in_list(&mut qb, chunk.iter().copied());
            qb.build_query_as().fetch_all(&mut *c).await?
        });
        for (k, m, j) in rows {
            tickets.insert(k, (m, j));
        }
    }
    Ok(tickets)
}

/// The stored alarm events among `event_ids`: each one's message and incident.
async fn load_alarms(
    tx: &mut Tx,
    event_ids: &HashSet<String>,
) -> Result<HashMap<String, (i64, i64, Option<i64>)>, Error> {
    let mut alarms = HashMap::new();
    let events: Vec<&String> = event_ids.iter().collect();
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<(String, i64, Option<i64>)> = per_backend!(&mut *tx, |c, DB| {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT event_id, message_id, incident_id FROM alarms WHERE event_id IN ",
            );
            in_list(&mut qb, chunk.iter().copied());
            qb.build_query_as().fetch_all(&mut *c).await?
        });
        for (e, m, i) in rows {
            alarms.insert(e, (m, 0, i));
        }
    }
    Ok(alarms)
}

/// The spans, per account, whose open incidents the batch may chain into. Only a new ALARM
/// event of a new message looks for incidents, each within the window of its own time: a
/// batch that also carries redeliveries of old alarms must not load every incident since.
/// With `stored`, the batch's messages are stored and undecided: each one's event looks.
fn ranges_to_load(
    alarm_ranges: &[AlarmRange<'_>],
    stored: bool,
    known_messages: &HashMap<String, KnownMessage>,
    alarms: &HashMap<String, (i64, i64, Option<i64>)>,
) -> HashMap<String, Vec<(i64, i64)>> {
    let mut ranges: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for &(transport_id, event_id, account, range) in alarm_ranges {
        let new_message = stored || !known_messages.contains_key(transport_id);
        if new_message && !alarms.contains_key(event_id) {
            ranges.entry(account.to_owned()).or_default().push(range);
        }
    }
    for spans in ranges.values_mut() {
        *spans = coalesce(std::mem::take(spans));
    }
    ranges
}

/// The open incidents overlapping `ranges`, and their ids by account.
#[allow(clippy::type_complexity)] // the two maps the store keeps
async fn load_incidents(
    tx: &mut Tx,
    ranges: &HashMap<String, Vec<(i64, i64)>>,
) -> Result<(HashMap<i64, IncidentState>, HashMap<String, Vec<i64>>), Error> {
    let mut incidents = HashMap::new();
    let mut open_by_account: HashMap<String, Vec<i64>> = HashMap::new();
    let wanted: Vec<(&String, (i64, i64))> = ranges
        .iter()
        .flat_map(|(a, spans)| spans.iter().map(move |r| (a, *r)))
        .collect();
    for chunk in wanted.chunks(ROWS_PER_STATEMENT) {
        #[allow(clippy::type_complexity)] // one row of the query below
        let rows: Vec<(i64, String, i64, i64, i64, i64, i64, Option<String>, bool)> = per_backend!(
            &mut *tx,
            |c, DB| {
                let mut qb = QueryBuilder::<DB>::new("WITH r(account, lo, hi) AS (");
                qb.push_values(chunk, |mut b, (account, (lo, hi))| {
                    b.push_bind((*account).clone())
                        .push_bind(*lo)
                        .push_bind(*hi);
                });
                qb.push(
                    ") SELECT DISTINCT i.id, i.account, i.first_event_ms, i.last_event_ms,
                        CAST(i.alarm_count AS BIGINT),
                        i.opened_by_message_id, i.opened_ms, i.alarm_name, i.has_agent
                    FROM r JOIN incidents i ON i.account = r.account
                    WHERE i.merged_into IS NULL AND i.last_event_ms >= r.lo AND i.first_event_ms <= r.hi",
                );
                qb.build_query_as().fetch_all(&mut *c).await?
            }
        );
        for (
            id,
            account,
            first_ms,
            last_ms,
            alarm_count,
            opened_by,
            opened_ms,
            alarm_name,
            has_job,
        ) in rows
        {
            if incidents.contains_key(&id) {
                continue; // found through two chunks
            }
            open_by_account.entry(account.clone()).or_default().push(id);
            incidents.insert(
                id,
                IncidentState {
                    id,
                    account,
                    alarm_name,
                    has_job,
                    first_ms,
                    last_ms,
                    alarm_count,
                    opened_by,
                    opened_ms,
                    merged: None,
                    new: false,
                    dirty: false,
                },
            );
        }
    }

    Ok((incidents, open_by_account))
}

impl<'t> WriteBehind<'t> {
    /// Loads what `batch` can touch. `tx` must be a SQLite transaction (one that holds the
    /// write lock: [`crate::db::Db::begin`] starts it with `BEGIN IMMEDIATE`).
    pub async fn load(
        tx: &'t mut Tx,
        policy: &Policy,
        batch: &[Planned<'_>],
    ) -> Result<WriteBehind<'t>, Error> {
        if matches!(tx, Tx::Postgres(_)) {
            return Err(Error::Config(
                "the write-behind replay store is for SQLite; Postgres replays decide statement by statement".into(),
            ));
        }
        Self::load_for(tx, policy, batch, None).await
    }

    /// Loads what deciding `batch` can touch when its messages are already stored and not yet
    /// decided (the live `decide` step's batches), on either backend: no message is inserted,
    /// every ALARM event looks for its incidents, and the messages' rows are locked (Postgres)
    /// with the decisions they already have read. On Postgres the caller holds the locks of
    /// every account and ticket in the batch ([`crate::scheduling::store::sql::lock_subjects`]),
    /// so nothing this loads changes before the commit; `drawn` is None for the counting pass
    /// and the ids of [`WriteBehind::draw`] for the second (see [`Ids`]). SQLite ignores it.
    pub async fn load_stored(
        tx: &'t mut Tx,
        policy: &Policy,
        batch: &[Planned<'_>],
        drawn: Option<DrawnIds>,
    ) -> Result<WriteBehind<'t>, Error> {
        let ids: Vec<i64> = batch
            .iter()
            .map(|p| {
                p.message_id.ok_or_else(|| {
                    Error::Invalid(format!("message {:?} is not stored", p.transport_id))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut store = Self::load_for(tx, policy, batch, Some(drawn.unwrap_or_default())).await?;
        store.stored_decisions = Some(stored_decisions(store.tx, &ids).await?);
        Ok(store)
    }

    /// `stored`: the batch's messages are stored, with the ids drawn for them (Postgres;
    /// [`DrawnIds::default`] for a counting pass). None: a replay's batch, on SQLite.
    async fn load_for(
        tx: &'t mut Tx,
        policy: &Policy,
        batch: &[Planned<'_>],
        stored: Option<DrawnIds>,
    ) -> Result<WriteBehind<'t>, Error> {
        let wanted = Wanted::of(batch, policy);
        let is_stored = stored.is_some();
        let (max, incident_ids, job_ids) = match (&mut *tx, stored) {
            (Tx::Sqlite(c), _) => {
                let max = MaxIds::read(c).await?;
                let (incidents, jobs) = (Ids::Next(max.incident + 1), Ids::Next(max.job + 1));
                (max, incidents, jobs)
            }
            (Tx::Postgres(_), Some(drawn)) => {
                // Alarm rows are numbered by their sequence on insert (no other row names
                // them); their provisional ids only index this batch's new rows. No message
                // is inserted.
                let max = MaxIds {
                    message: 0,
                    incident: 0,
                    alarm: PROVISIONAL - 1,
                    job: 0,
                };
                let (incidents, jobs) = if drawn.counting {
                    (Ids::Next(PROVISIONAL), Ids::Next(PROVISIONAL))
                } else {
                    (Ids::Drawn(drawn.incidents), Ids::Drawn(drawn.jobs))
                };
                (max, incidents, jobs)
            }
            (Tx::Postgres(_), None) => {
                return Err(Error::Config(
                    "the write-behind replay store is for SQLite; Postgres replays decide statement by statement".into(),
                ))
            }
        };
        // Stored messages are not inserted again: none to look up (an insert is then an
        // error, as for any key not loaded).
        let (known_messages, transport_ids) = if is_stored {
            (HashMap::new(), HashSet::new())
        } else {
            load_messages(tx, batch, wanted.transport_ids, &wanted.repeated).await?
        };
        let tickets = load_tickets(tx, &wanted.ticket_keys).await?;
        let alarms = load_alarms(tx, &wanted.event_ids).await?;
        let ranges = ranges_to_load(&wanted.alarm_ranges, is_stored, &known_messages, &alarms);
        let (incidents, open_by_account) = load_incidents(tx, &ranges).await?;
        Ok(WriteBehind {
            tx,
            message_base: max.message,
            next_message: max.message + 1,
            incident_ids,
            next_alarm: max.alarm + 1,
            job_ids,
            stored_decisions: None,
            loaded_transport_ids: transport_ids,
            loaded_ticket_keys: wanted.ticket_keys,
            loaded_event_ids: wanted.event_ids,
            loaded_ranges: ranges,
            known_messages,
            new_messages: Vec::new(),
            new_message_index: HashMap::new(),
            tickets,
            new_tickets: Vec::new(),
            alarms,
            new_alarms: Vec::new(),
            alarm_base: max.alarm,
            incidents,
            open_by_account,
            moves: Vec::new(),
            jobs: Vec::new(),
            decisions: Vec::new(),
            decided: HashMap::new(),
            rejected: Vec::new(),
        })
    }

    /// After a counting pass on Postgres: the incident and job ids the batch needs, or None
    /// when this pass's ids are final (SQLite, or a second pass) and it can be flushed.
    pub fn needs(&self) -> Option<(i64, i64)> {
        match (&self.tx, &self.incident_ids, &self.job_ids) {
            (Tx::Postgres(_), Ids::Next(_), Ids::Next(_)) => {
                Some((self.incident_ids.counted(), self.job_ids.counted()))
            }
            _ => None,
        }
    }

    /// Draws `incidents` and `jobs` ids from their tables' sequences, in one round trip: a
    /// second pass numbers its new rows with them.
    pub async fn draw(tx: &mut Tx, incidents: i64, jobs: i64) -> Result<DrawnIds, Error> {
        let Tx::Postgres(c) = tx else {
            return Ok(DrawnIds::default());
        };
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT 'incident', nextval(pg_get_serial_sequence('incidents', 'id'))
                FROM generate_series(1, $1)
            UNION ALL
            SELECT 'job', nextval(pg_get_serial_sequence('agent_jobs', 'id'))
                FROM generate_series(1, $2)",
        )
        .bind(incidents)
        .bind(jobs)
        .fetch_all(&mut **c)
        .await?;
        let mut drawn = DrawnIds {
            counting: false,
            ..DrawnIds::default()
        };
        for (what, id) in rows {
            match what.as_str() {
                "incident" => drawn.incidents.push_back(id),
                _ => drawn.jobs.push_back(id),
            }
        }
        // In the order a single pass would have numbered them.
        drawn.incidents.make_contiguous().sort_unstable();
        drawn.jobs.make_contiguous().sort_unstable();
        Ok(drawn)
    }

    fn not_loaded(what: &str, key: &str) -> Error {
        Error::Invalid(format!(
            "write-behind store: {what} {key:?} was not in the batch it loaded"
        ))
    }

    fn incident_mut(&mut self, id: i64) -> Result<&mut IncidentState, Error> {
        self.incidents
            .get_mut(&id)
            .ok_or_else(|| Error::Corrupt(format!("incident {id} is not loaded")))
    }

    /// Writes the batch's rows in the caller's transaction, parents before children (foreign
    /// keys are enforced per statement): messages, tickets, incidents, alarms, jobs, then the
    /// decisions and rejections that name them.
    pub async fn flush(mut self) -> Result<(), Error> {
        self.write_messages().await?;
        self.write_tickets().await?;
        self.write_incidents().await?;
        self.write_alarms().await?;
        self.write_jobs().await?;
        self.write_decisions().await?;
        self.write_rejected().await
    }

    /// New messages, and one more delivery counted on each known one delivered again.
    async fn write_messages(&mut self) -> Result<(), Error> {
        for chunk in self.new_messages.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO messages (id, transport_id, source, body, raw, reuses, received_ms, deliveries, last_delivered_ms) ",
            );
                qb.push_values(chunk, |mut b, m| {
                    b.push_bind(m.id)
                        .push_bind(m.transport_id.clone())
                        .push_bind(m.source.clone())
                        .push_bind(m.body.clone())
                        .push_bind(m.raw.clone())
                        .push_bind(m.reuses)
                        .push_bind(m.received_ms)
                        .push_bind(m.deliveries)
                        .push_bind(m.last_delivered_ms);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        for m in self.known_messages.values().filter(|m| m.added > 0) {
            crate::with_conn!(&mut *self.tx, |c| {
                sqlx::query(
                "UPDATE messages SET deliveries = deliveries + $2, last_delivered_ms = $3 WHERE id = $1",
            )
            .bind(m.id)
            .bind(m.added)
            .bind(m.last_delivered_ms)
            .execute(c)
            .await?
            .rows_affected()
            });
        }
        Ok(())
    }

    /// First sightings of tickets.
    async fn write_tickets(&mut self) -> Result<(), Error> {
        for chunk in self.new_tickets.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO tickets (key, jira_id, project, summary, first_message_id, first_seen_ms) ",
            );
                qb.push_values(chunk, |mut b, t| {
                    b.push_bind(t.key.clone())
                        .push_bind(t.jira_id.clone())
                        .push_bind(t.project.clone())
                        .push_bind(t.summary.clone())
                        .push_bind(t.first_message_id)
                        .push_bind(t.first_seen_ms);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        Ok(())
    }

    /// New incidents, then the loaded ones the batch widened, merged or gave an agent.
    async fn write_incidents(&mut self) -> Result<(), Error> {
        // New incidents in id order: a merge always folds into the lower id, so `merged_into`
        // points at a row in the same or an earlier statement.
        let mut created: Vec<&IncidentState> = self.incidents.values().filter(|i| i.new).collect();
        created.sort_by_key(|i| i.id);
        for chunk in created.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO incidents (id, account, alarm_name, first_event_ms, last_event_ms, alarm_count,
                    opened_by_message_id, opened_ms, merged_into, merged_by_message_id, merged_ms,
                    has_agent) ",
            );
                qb.push_values(chunk, |mut b, i| {
                    b.push_bind(i.id)
                        .push_bind(i.account.clone())
                        .push_bind(i.alarm_name.clone())
                        .push_bind(i.first_ms)
                        .push_bind(i.last_ms)
                        .push_bind(i.alarm_count)
                        .push_bind(i.opened_by)
                        .push_bind(i.opened_ms)
                        .push_bind(i.merged.map(|m| m.0))
                        .push_bind(i.merged.map(|m| m.1))
                        .push_bind(i.merged.map(|m| m.2))
                        .push_bind(i.has_job);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        let changed: Vec<&IncidentState> = self
            .incidents
            .values()
            .filter(|i| !i.new && i.dirty)
            .collect();
        for chunk in changed.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                    "WITH v(id, first_ms, last_ms, alarm_count, merged_into, merged_by, merged_ms,
                    has_agent) AS (",
                );
                qb.push_values(chunk, |mut b, i| {
                    b.push_bind(i.id)
                        .push_bind(i.first_ms)
                        .push_bind(i.last_ms)
                        .push_bind(i.alarm_count)
                        .push_bind(i.merged.map(|m| m.0))
                        .push_bind(i.merged.map(|m| m.1))
                        .push_bind(i.merged.map(|m| m.2))
                        .push_bind(i.has_job);
                });
                qb.push(
                    ") UPDATE incidents SET first_event_ms = v.first_ms, last_event_ms = v.last_ms,
                    alarm_count = v.alarm_count, merged_into = v.merged_into,
                    merged_by_message_id = v.merged_by, merged_ms = v.merged_ms,
                    has_agent = v.has_agent
                FROM v WHERE incidents.id = v.id",
                );
                qb.build().execute(&mut *c).await?;
            });
        }
        Ok(())
    }

    /// New alarm events, then the stored ones whose incident was merged away.
    async fn write_alarms(&mut self) -> Result<(), Error> {
        // On Postgres the sequence numbers the rows (their ids here are provisional: nothing
        // else names an alarm row); on SQLite they are the ids SQLite would give.
        let numbered = matches!(self.tx, Tx::Sqlite(_));
        let insert = if numbered {
            "INSERT INTO alarms (id, event_id, message_id, account, alarm_name, state, event_ms,
                incident_id, original_incident_id) "
        } else {
            "INSERT INTO alarms (event_id, message_id, account, alarm_name, state, event_ms,
                incident_id, original_incident_id) "
        };
        for chunk in self.new_alarms.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(insert);
                qb.push_values(chunk, |mut b, a| {
                    if numbered {
                        b.push_bind(a.id);
                    }
                    b.push_bind(a.event_id.clone())
                        .push_bind(a.message_id)
                        .push_bind(a.account.clone())
                        .push_bind(a.alarm_name.clone())
                        .push_bind(a.state)
                        .push_bind(a.event_ms)
                        .push_bind(a.incident_id)
                        .push_bind(a.original_incident_id);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        // The batch's own alarms already point at the surviving incident; these moves catch the
        // rows stored before the batch.
        for (other, into) in &self.moves {
            crate::with_conn!(&mut *self.tx, |c| sqlx::query(
                "UPDATE alarms SET incident_id = $2 WHERE incident_id = $1"
            )
            .bind(other)
            .bind(into)
            .execute(c)
            .await?
            .rows_affected());
        }
        Ok(())
    }

    /// The jobs the batch's spawn decisions created.
    async fn write_jobs(&mut self) -> Result<(), Error> {
        for chunk in self.jobs.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO agent_jobs (id, kind, ticket_key, incident_id, message_id, created_ms, updated_ms) ",
            );
                qb.push_values(chunk, |mut b, j| {
                    b.push_bind(j.id)
                        .push_bind(j.kind)
                        .push_bind(j.ticket_key.clone())
                        .push_bind(j.incident_id)
                        .push_bind(j.message_id)
                        .push_bind(j.ms)
                        .push_bind(j.ms);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        Ok(())
    }

    /// One decision per newly decided message.
    async fn write_decisions(&mut self) -> Result<(), Error> {
        for chunk in self.decisions.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO decisions (message_id, decision, kind, ticket_key, account, incident_id, job_id,
                    duplicate_of, merged_incident_ids, reason, policy, decided_ms) ",
            );
                qb.push_values(chunk, |mut b, (message_id, d, policy, ms)| {
                    b.push_bind(*message_id)
                        .push_bind(d.decision.as_str())
                        .push_bind(d.kind.map(SubjectKind::as_str))
                        .push_bind(d.ticket_key.clone())
                        .push_bind(d.account.clone())
                        .push_bind(d.incident)
                        .push_bind(d.job)
                        .push_bind(d.duplicate_of)
                        .push_bind(crate::scheduling::store::sql::merged_ids(&d.merged))
                        .push_bind(d.reason.clone())
                        .push_bind(policy.clone())
                        .push_bind(*ms);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        Ok(())
    }

    /// Why each rejected message was rejected.
    async fn write_rejected(&mut self) -> Result<(), Error> {
        for chunk in self.rejected.chunks(ROWS_PER_STATEMENT) {
            per_backend!(&mut *self.tx, |c, DB| {
                let mut qb = QueryBuilder::<DB>::new(
                    "INSERT INTO rejected (message_id, reason, rejected_ms) ",
                );
                qb.push_values(chunk, |mut b, (id, reason, ms)| {
                    b.push_bind(*id).push_bind(reason.clone()).push_bind(*ms);
                });
                qb.build().execute(&mut *c).await?;
            });
        }
        Ok(())
    }
}

impl Store for WriteBehind<'_> {
    async fn insert_message(
        &mut self,
        transport_id: &str,
        source: &str,
        body: &str,
        raw: Option<&[u8]>,
        reuses: Option<i64>,
        received_ms: i64,
    ) -> Result<Ingested, Error> {
        if !self.loaded_transport_ids.contains(transport_id) {
            return Err(Self::not_loaded("transport id", transport_id));
        }
        let (body, raw) = crate::scheduling::domain::storable_body(body, raw);
        if let Some(&i) = self.new_message_index.get(transport_id) {
            let m = &mut self.new_messages[i];
            if m.body != body {
                return Ok(Ingested::IdTaken { original_id: m.id });
            }
            m.deliveries += 1;
            m.last_delivered_ms = received_ms;
            return Ok(Ingested::Redelivered { message_id: m.id });
        }
        if let Some(m) = self.known_messages.get_mut(transport_id) {
            if m.body != body {
                return Ok(Ingested::IdTaken { original_id: m.id });
            }
            m.added += 1;
            m.last_delivered_ms = received_ms;
            return Ok(Ingested::Redelivered { message_id: m.id });
        }
        let id = self.next_message;
        self.next_message += 1;
        self.new_message_index
            .insert(transport_id.to_owned(), self.new_messages.len());
        self.new_messages.push(NewMessage {
            id,
            transport_id: transport_id.to_owned(),
            source: source.to_owned(),
            body: body.into_owned(),
            raw: raw.map(<[u8]>::to_vec),
            reuses,
            received_ms,
            deliveries: 1,
            last_delivered_ms: received_ms,
        });
        Ok(Ingested::New { message_id: id })
    }

    async fn lock_decided(&mut self, message_id: i64) -> Result<Option<Decision>, Error> {
        if let Some(stored) = &self.stored_decisions {
            // Read (and on Postgres locked) with the batch; decided here since?
            if let Some(&i) = self.decided.get(&message_id) {
                return Ok(Some(self.decisions[i].1.clone()));
            }
            return stored
                .get(&message_id)
                .cloned()
                .ok_or_else(|| Self::not_loaded("message", &message_id.to_string()));
        }
        // The SQLite transaction holds the database's only write lock.
        if message_id > self.message_base {
            return Ok(self
                .decided
                .get(&message_id)
                .map(|&i| self.decisions[i].1.clone()));
        }
        // Messages stored before the batch keep the decision they have; this batch never
        // decides them again, so the table is the truth.
        crate::scheduling::store::sql::decision_of(self.tx, message_id).await
    }

    async fn insert_decision(
        &mut self,
        message_id: i64,
        d: &Decision,
        policy: &str,
        decided_ms: i64,
    ) -> Result<(), Error> {
        if self.decided.contains_key(&message_id) {
            return Err(Error::Corrupt(format!(
                "message {message_id} was decided twice in one batch"
            )));
        }
        self.decided.insert(message_id, self.decisions.len());
        self.decisions
            .push((message_id, d.clone(), policy.to_owned(), decided_ms));
        Ok(())
    }

    fn candidate_tx(&mut self) -> Result<&mut crate::db::Tx, Error> {
        // The replay picks the statement store whenever a candidate is set.
        Err(Error::Config(
            "the write-behind store does not evaluate candidates: replay with --store statements"
                .into(),
        ))
    }
}

impl State for WriteBehind<'_> {
    async fn lock_account(&mut self, _account: &str) -> Result<(), Error> {
        // The SQLite transaction holds the database's only write lock.
        Ok(())
    }

    async fn insert_rejected(
        &mut self,
        message_id: i64,
        reason: &str,
        ms: i64,
    ) -> Result<(), Error> {
        self.rejected.push((message_id, reason.to_owned(), ms));
        Ok(())
    }

    async fn insert_ticket(&mut self, t: &Ticket, message_id: i64, ms: i64) -> Result<bool, Error> {
        if !self.loaded_ticket_keys.contains(&t.key) {
            return Err(Self::not_loaded("ticket key", &t.key));
        }
        if self.tickets.contains_key(&t.key) {
            return Ok(false);
        }
        self.tickets.insert(t.key.clone(), (message_id, None));
        self.new_tickets.push(NewTicket {
            key: t.key.clone(),
            jira_id: t.jira_id.clone(),
            project: t.project.clone(),
            summary: t.summary.clone(),
            first_message_id: message_id,
            first_seen_ms: ms,
        });
        Ok(true)
    }

    async fn ticket_origin(&mut self, key: &str) -> Result<(i64, Option<i64>), Error> {
        self.tickets
            .get(key)
            .copied()
            .ok_or_else(|| Error::Corrupt(format!("ticket {key} vanished")))
    }

    async fn insert_alarm(&mut self, a: &Alarm, message_id: i64) -> Result<Option<i64>, Error> {
        if !self.loaded_event_ids.contains(&a.event_id) {
            return Err(Self::not_loaded("alarm event id", &a.event_id));
        }
        if self.alarms.contains_key(&a.event_id) {
            return Ok(None);
        }
        let id = self.next_alarm;
        self.next_alarm += 1;
        self.alarms
            .insert(a.event_id.clone(), (message_id, id, None));
        self.new_alarms.push(NewAlarm {
            id,
            event_id: a.event_id.clone(),
            message_id,
            account: a.account.clone(),
            alarm_name: a.alarm_name.clone(),
            state: a.state.as_str(),
            event_ms: a.event_ms,
            incident_id: None,
            original_incident_id: None,
        });
        Ok(Some(id))
    }

    async fn alarm_origin(&mut self, event_id: &str) -> Result<(i64, Option<i64>), Error> {
        let &(message_id, row, incident) = self
            .alarms
            .get(event_id)
            .ok_or_else(|| Error::Corrupt(format!("alarm event {event_id} vanished")))?;
        if row > 0 {
            let a = &self.new_alarms[(row - self.alarm_base - 1) as usize];
            return Ok((message_id, a.incident_id));
        }
        Ok((message_id, incident))
    }

    async fn open_incidents_near(
        &mut self,
        account: &str,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<IncidentSpan>, Error> {
        let covered = self
            .loaded_ranges
            .get(account)
            .is_some_and(|spans| spans.iter().any(|&(a, b)| a <= lo && hi <= b));
        if !covered {
            return Err(Self::not_loaded("incident range of account", account));
        }
        let mut out: Vec<IncidentSpan> = self
            .open_by_account
            .get(account)
            .into_iter()
            .flatten()
            .filter_map(|id| self.incidents.get(id))
            .filter(|i| i.last_ms >= lo && i.first_ms <= hi)
            .map(|i| IncidentSpan {
                id: i.id,
                first_ms: i.first_ms,
                last_ms: i.last_ms,
                alarm_name: i.alarm_name.clone(),
                has_job: i.has_job,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    async fn open_incident(
        &mut self,
        account: &str,
        alarm_name: Option<&str>,
        event_ms: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<i64, Error> {
        let id = self.incident_ids.take("incident")?;
        self.open_by_account
            .entry(account.to_owned())
            .or_default()
            .push(id);
        self.incidents.insert(
            id,
            IncidentState {
                id,
                account: account.to_owned(),
                alarm_name: alarm_name.map(str::to_owned),
                has_job: false,
                first_ms: event_ms,
                last_ms: event_ms,
                alarm_count: 1,
                opened_by: message_id,
                opened_ms: ms,
                merged: None,
                new: true,
                dirty: true,
            },
        );
        Ok(id)
    }

    async fn extend_incident(
        &mut self,
        id: i64,
        first: i64,
        last: i64,
        added: i64,
    ) -> Result<(), Error> {
        let i = self.incident_mut(id)?;
        i.first_ms = i.first_ms.min(first);
        i.last_ms = i.last_ms.max(last);
        i.alarm_count += added;
        i.dirty = true;
        Ok(())
    }

    async fn merge_incident(
        &mut self,
        into: i64,
        other: i64,
        message_id: i64,
        ms: i64,
    ) -> Result<(), Error> {
        let o = self.incident_mut(other)?;
        if o.merged.is_some() {
            return Err(Error::Corrupt(format!("incident {other} is not open")));
        }
        o.merged = Some((into, message_id, ms));
        o.dirty = true;
        let (first, last, count, account, has_agent) = (
            o.first_ms,
            o.last_ms,
            o.alarm_count,
            o.account.clone(),
            o.has_job,
        );
        // As the statement store does: the merged incident's agent is the survivor's.
        if has_agent {
            let i = self.incident_mut(into)?;
            i.has_job = true;
            i.dirty = true;
        }
        if let Some(open) = self.open_by_account.get_mut(&account) {
            open.retain(|&id| id != other);
        }
        for a in &mut self.new_alarms {
            if a.incident_id == Some(other) {
                a.incident_id = Some(into);
            }
        }
        for (_, row, incident) in self.alarms.values_mut() {
            if *row == 0 && *incident == Some(other) {
                *incident = Some(into);
            }
        }
        self.moves.push((other, into));
        self.extend_incident(into, first, last, count).await
    }

    async fn set_alarm_incident(&mut self, alarm_id: i64, incident: i64) -> Result<(), Error> {
        let a = self
            .new_alarms
            .get_mut((alarm_id - self.alarm_base - 1) as usize)
            .filter(|a| a.id == alarm_id)
            .ok_or_else(|| Error::Corrupt(format!("alarm {alarm_id} is not in this batch")))?;
        a.incident_id = Some(incident);
        a.original_incident_id = Some(incident);
        Ok(())
    }

    async fn insert_job(
        &mut self,
        kind: SubjectKind,
        ticket_key: Option<&str>,
        incident: Option<i64>,
        message_id: i64,
        ms: i64,
    ) -> Result<Option<i64>, Error> {
        let id = self.job_ids.take("job")?;
        if let Some(key) = ticket_key {
            if let Some(t) = self.tickets.get_mut(key) {
                t.1 = Some(id);
            }
        }
        if let Some(i) = incident.and_then(|i| self.incidents.get_mut(&i)) {
            i.has_job = true;
            i.dirty = true;
        }
        self.jobs.push(NewJob {
            id,
            kind: match kind {
                SubjectKind::Ticket => "ticket",
                SubjectKind::Alarm => "incident",
            },
            ticket_key: ticket_key.map(str::to_owned),
            incident_id: incident,
            message_id,
            ms,
        });
        Ok(Some(id))
    }
}
