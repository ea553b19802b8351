//! The statements of the PostgreSQL store, each an async function over one connection.

use super::conn::{pg, Conn};
use super::schema::{BASE_KEY, LOCK_CLASS, LOCK_LEAD, LOCK_WRITE};
use crate::store::{Changes, LogBase, StoreError, Table};
use std::collections::BTreeMap;

/// Opens a write transaction and waits for the write lock (at most `lock_timeout`).
pub async fn begin_locked(c: &mut Conn) -> Result<(), StoreError> {
    c.client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, {LOCK_WRITE})"
        ))
        .await
        .map_err(pg)?;
    c.in_turn = true;
    Ok(())
}

const LAST: &str = "SELECT (SELECT max(seq) FROM formica_log), \
                    (SELECT v FROM formica_meta WHERE k = $1)";

/// The number of the last record (the one before the base when every record was dropped, 0
/// when none was ever appended) and where the kept log starts.
pub async fn last(c: &mut Conn) -> Result<(u64, LogBase), StoreError> {
    let st = c.prep(LAST).await?;
    let row = c.client.query_one(&st, &[&BASE_KEY]).await.map_err(pg)?;
    let max: Option<i64> = row.get(0);
    let base = match row.get::<_, Option<Vec<u8>>>(1) {
        Some(v) => LogBase::decode(&v)?,
        None => LogBase::default(),
    };
    let last = match max {
        Some(m) => u64::try_from(m).map_err(|_| StoreError::Corrupt {
            seq: 0,
            reason: format!("formica_log holds record number {m}"),
        })?,
        None => base.first - 1,
    };
    Ok((last, base))
}

const INSERT_LOG: &str =
    "INSERT INTO formica_log (seq, v) SELECT * FROM unnest($1::int8[], $2::bytea[])";
const PUT_ROWS: &str = "INSERT INTO formica_rows (t, k, v) \
                        SELECT * FROM unnest($1::int2[], $2::bytea[], $3::bytea[]) \
                        ON CONFLICT (t, k) DO UPDATE SET v = EXCLUDED.v";
const DELETE_ROWS: &str = "DELETE FROM formica_rows r USING unnest($1::int2[], $2::bytea[]) \
                           AS d(t, k) WHERE r.t = d.t AND r.k = d.k";
const PUT_ADMISSION: &str = "INSERT INTO formica_admission (k, v, expires) \
                             SELECT k, v, NULL FROM unnest($1::bytea[], $2::bytea[]) AS a(k, v) \
                             ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, expires = NULL";
const DELETE_ADMISSION: &str = "DELETE FROM formica_admission WHERE k = ANY($1::bytea[])";

/// One commit's writes, owned (they run on the store's runtime): the records, and the sets of
/// changes merged in order into the final value of each row.
#[derive(Debug)]
pub struct Batch {
    first_seq: i64,
    seqs: Vec<i64>,
    records: Vec<Vec<u8>>,
    put: (Vec<i16>, Vec<Vec<u8>>, Vec<Vec<u8>>),
    delete: (Vec<i16>, Vec<Vec<u8>>),
    admit: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    unadmit: Vec<Vec<u8>>,
}

impl Batch {
    pub fn new(
        first_seq: u64,
        records: &[Vec<u8>],
        changes: &[&Changes],
    ) -> Result<Batch, StoreError> {
        let first = i64::try_from(first_seq)
            .map_err(|_| StoreError::Io(format!("record number {first_seq} is out of range")))?;
        let mut merged: BTreeMap<(Table, &[u8]), Option<&[u8]>> = BTreeMap::new();
        for ((t, k), v) in changes.iter().flat_map(|c| c.iter()) {
            merged.insert((*t, k.as_slice()), v.as_deref());
        }
        let mut b = Batch {
            first_seq: first,
            seqs: (0..records.len() as i64).map(|i| first + i).collect(),
            records: records.to_vec(),
            put: Default::default(),
            delete: Default::default(),
            admit: Default::default(),
            unadmit: Vec::new(),
        };
        for ((t, k), v) in merged {
            match (t == Table::Admission, v) {
                (true, Some(v)) => {
                    b.admit.0.push(k.to_vec());
                    b.admit.1.push(v.to_vec());
                }
                (true, None) => b.unadmit.push(k.to_vec()),
                (false, Some(v)) => {
                    b.put.0.push(i16::from(t.code()));
                    b.put.1.push(k.to_vec());
                    b.put.2.push(v.to_vec());
                }
                (false, None) => {
                    b.delete.0.push(i16::from(t.code()));
                    b.delete.1.push(k.to_vec());
                }
            }
        }
        Ok(b)
    }

    /// The writes, in the open transaction: the check that the records follow the last one
    /// and every statement sent at once (pipelined: one round trip for the lot).
    pub async fn write(self, c: &mut Conn) -> Result<(), StoreError> {
        let last_st = c.prep(LAST).await?;
        let log_st = c.prep(INSERT_LOG).await?;
        let put_st = c.prep(PUT_ROWS).await?;
        let del_st = c.prep(DELETE_ROWS).await?;
        let admit_st = c.prep(PUT_ADMISSION).await?;
        let unadmit_st = c.prep(DELETE_ADMISSION).await?;
        let cl = &c.client;
        let check = async {
            if self.records.is_empty() {
                return Ok(None);
            }
            cl.query_one(&last_st, &[&BASE_KEY]).await.map(Some)
        };
        let log = async {
            if self.records.is_empty() {
                return Ok(0);
            }
            cl.execute(&log_st, &[&self.seqs, &self.records]).await
        };
        let put = async {
            if self.put.0.is_empty() {
                return Ok(0);
            }
            cl.execute(&put_st, &[&self.put.0, &self.put.1, &self.put.2])
                .await
        };
        let del = async {
            if self.delete.0.is_empty() {
                return Ok(0);
            }
            cl.execute(&del_st, &[&self.delete.0, &self.delete.1]).await
        };
        let admit = async {
            if self.admit.0.is_empty() {
                return Ok(0);
            }
            cl.execute(&admit_st, &[&self.admit.0, &self.admit.1]).await
        };
        let unadmit = async {
            if self.unadmit.is_empty() {
                return Ok(0);
            }
            cl.execute(&unadmit_st, &[&self.unadmit]).await
        };
        let (check, log, put, del, admit, unadmit) =
            tokio::join!(check, log, put, del, admit, unadmit);
        // The order check first: a record number taken twice also fails the log's insert.
        if let Some(row) = check.map_err(pg)? {
            let max: Option<i64> = row.get(0);
            let base = match row.get::<_, Option<Vec<u8>>>(1) {
                Some(v) => LogBase::decode(&v)?,
                None => LogBase::default(),
            };
            // The insert ran in the same snapshot after the check: the check saw the log before.
            let last = max.unwrap_or(base.first as i64 - 1);
            if self.first_seq != last + 1 {
                return Err(StoreError::Io(format!(
                    "records from {} refused: the log ends at record {last}, so the next is {}",
                    self.first_seq,
                    last + 1
                )));
            }
        }
        for r in [log, put, del, admit, unadmit] {
            r.map_err(pg)?;
        }
        Ok(())
    }
}

const GET_ROW: &str = "SELECT v FROM formica_rows WHERE t = $1 AND k = $2";
const GET_ADMISSION: &str = "SELECT v FROM formica_admission WHERE k = $1";

pub async fn get(c: &mut Conn, t: Table, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
    let row = if t == Table::Admission {
        let st = c.prep(GET_ADMISSION).await?;
        c.client.query_opt(&st, &[&key]).await
    } else {
        let st = c.prep(GET_ROW).await?;
        c.client.query_opt(&st, &[&i16::from(t.code()), &key]).await
    }
    .map_err(pg)?;
    Ok(row.map(|r| r.get(0)))
}

const RANGE_TO: &str = "SELECT k, v FROM formica_rows WHERE t = $1 AND k >= $2 AND k < $3 \
                        ORDER BY k LIMIT $4";
const RANGE_ALL: &str =
    "SELECT k, v FROM formica_rows WHERE t = $1 AND k >= $2 ORDER BY k LIMIT $3";
const ADMISSION_TO: &str =
    "SELECT k, v FROM formica_admission WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3";
const ADMISSION_ALL: &str = "SELECT k, v FROM formica_admission WHERE k >= $1 ORDER BY k LIMIT $2";

/// At most `limit` rows of `t` from `from` (included) to `to` (excluded), in key order.
pub async fn range_page(
    c: &mut Conn,
    t: Table,
    from: Vec<u8>,
    to: Option<Vec<u8>>,
    limit: i64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let code = i16::from(t.code());
    let rows = match (t == Table::Admission, &to) {
        (false, Some(to)) => {
            let st = c.prep(RANGE_TO).await?;
            c.client.query(&st, &[&code, &from, to, &limit]).await
        }
        (false, None) => {
            let st = c.prep(RANGE_ALL).await?;
            c.client.query(&st, &[&code, &from, &limit]).await
        }
        (true, Some(to)) => {
            let st = c.prep(ADMISSION_TO).await?;
            c.client.query(&st, &[&from, to, &limit]).await
        }
        (true, None) => {
            let st = c.prep(ADMISSION_ALL).await?;
            c.client.query(&st, &[&from, &limit]).await
        }
    }
    .map_err(pg)?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

const SCAN: &str =
    "SELECT seq, v FROM formica_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3";

pub async fn scan_page(
    c: &mut Conn,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let st = c.prep(SCAN).await?;
    let rows = c
        .client
        .query(&st, &[&from, &to, &limit])
        .await
        .map_err(pg)?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// In the open write transaction: drops the records before `base.first` and records `base`.
pub async fn drop_before(c: &mut Conn, base: LogBase) -> Result<(), StoreError> {
    let (last, _) = last(c).await?;
    if base.first > last + 1 {
        return Err(StoreError::Io(format!(
            "cannot drop records up to {}: the log ends before",
            base.first - 1
        )));
    }
    let first = i64::try_from(base.first)
        .map_err(|_| StoreError::Io(format!("record number {} is out of range", base.first)))?;
    c.client
        .execute("DELETE FROM formica_log WHERE seq < $1", &[&first])
        .await
        .map_err(pg)?;
    c.client
        .execute(
            "INSERT INTO formica_meta (k, v) VALUES ($1, $2) \
             ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            &[&BASE_KEY, &base.encode()],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

const PROJECTIONS: &str =
    "SELECT t, k, v FROM formica_rows WHERE (t, k) > ($1, $2) ORDER BY t, k LIMIT $3";

/// A page of every projection row in table (code) then key order, after `after`; the first
/// page begins the one REPEATABLE READ transaction the later ones read in.
pub async fn projections_page(
    c: &mut Conn,
    after: Option<(i16, Vec<u8>)>,
    limit: i64,
) -> Result<Vec<(i16, Vec<u8>, Vec<u8>)>, StoreError> {
    let (t, k) = match after {
        None => {
            c.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg)?;
            c.in_turn = true;
            (-1, Vec::new())
        }
        Some(_) if !c.in_turn => {
            return Err(StoreError::Unavailable(
                "the connection was lost while the projections were read".into(),
            ))
        }
        Some(a) => a,
    };
    let st = c.prep(PROJECTIONS).await?;
    let rows = c.client.query(&st, &[&t, &k, &limit]).await.map_err(pg)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Ends the read transaction of [`projections_page`].
pub async fn end_read(c: &mut Conn) -> Result<(), StoreError> {
    if !c.in_turn {
        return Err(StoreError::Unavailable(
            "the connection was lost while the projections were read".into(),
        ));
    }
    c.client.batch_execute("COMMIT").await.map_err(pg)?;
    c.in_turn = false;
    Ok(())
}

/// Inserts an admission row unless a live one has the key: an expired row (its `expires`
/// passed, not yet swept) is taken over, so a claim does not depend on when the sweep ran.
/// Rows the writer committed (no expiry) are never taken over.
const CLAIM: &str = "INSERT INTO formica_admission (k, v, expires) VALUES ($1, $2, $3) \
                     ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, expires = EXCLUDED.expires \
                     WHERE formica_admission.expires < $4";

pub async fn claim(
    c: &mut Conn,
    key: Vec<u8>,
    value: Vec<u8>,
    expires_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let st = c.prep(CLAIM).await?;
    let n = c
        .client
        .execute(&st, &[&key, &value, &expires_ms, &now_ms])
        .await
        .map_err(pg)?;
    Ok(n == 1)
}

const SWEEP: &str = "DELETE FROM formica_admission WHERE k IN \
                     (SELECT k FROM formica_admission WHERE expires < $1 LIMIT $2)";

/// Removes up to `limit` expired admission rows.
pub async fn sweep(c: &mut Conn, now_ms: i64, limit: i64) -> Result<u64, StoreError> {
    let st = c.prep(SWEEP).await?;
    c.client.execute(&st, &[&now_ms, &limit]).await.map_err(pg)
}

/// On the lead connection: true while this session holds the lead lock (checked with a round
/// trip, so a lost connection shows), else takes it when it is free.
pub async fn lead(c: &mut Conn) -> Result<bool, StoreError> {
    if c.leads {
        c.client.batch_execute("SELECT 1").await.map_err(pg)?;
        return Ok(true);
    }
    let row = c
        .client
        .query_one(
            &format!("SELECT pg_try_advisory_lock({LOCK_CLASS}, {LOCK_LEAD})"),
            &[],
        )
        .await
        .map_err(pg)?;
    c.leads = row.get(0);
    Ok(c.leads)
}
