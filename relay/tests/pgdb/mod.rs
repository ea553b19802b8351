//! A fresh PostgreSQL database per test, on the server `FORMICA_TEST_PG_URL` names (`.ci/pg.sh
//! start` prints it): created as `formica_t_<random>` and dropped (forced) when the value goes,
//! so tests run in parallel on one server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use formica_relay::store::PgConfig;

/// The variable that names the test server.
pub const URL_VAR: &str = "FORMICA_TEST_PG_URL";

#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let admin = std::env::var(URL_VAR).unwrap_or_else(|_| {
            panic!("{URL_VAR} is not set: `.ci/pg.sh start` starts a server and prints it")
        });
        let name = format!("formica_t_{:016x}", rand::random::<u64>());
        exec(&admin, &format!("CREATE DATABASE {name}"));
        let url = with_db(&admin, &name);
        TestDb { name, url, admin }
    }

    pub fn config(&self) -> PgConfig {
        PgConfig::new(self.url.clone())
    }

    /// Runs `sql` on the server's maintenance database (the one the variable names).
    pub fn admin(&self, sql: &str) {
        exec(&self.admin, sql);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        exec(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `url` with its database replaced by `db` (a URL or a `key=value` string).
pub fn with_db(url: &str, db: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((m, q)) => (m, Some(q)),
                None => (rest, None),
            };
            let host = main.split('/').next().unwrap_or(main);
            let mut out = format!("{scheme}{host}/{db}");
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            return out;
        }
    }
    format!("{url} dbname={db}")
}

/// Runs `sql` on a connection of its own, on a thread with its own runtime (the caller may be
/// inside a runtime).
pub fn exec(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
            tokio::spawn(conn);
            c.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    })
    .join()
    .unwrap();
}
