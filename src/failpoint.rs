//! Named crash points for the crash-ordering tests: in debug builds, the environment variable
//! `ANOMALY_SIDECAR_FAILPOINT=<name>` aborts the process at that point the first time it is
//! reached, as a kill -9 would. Release builds compile every point to nothing.

/// Aborts here if this is the failpoint asked for (debug builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let wanted = WANTED.get_or_init(|| std::env::var("ANOMALY_SIDECAR_FAILPOINT").ok());
        if wanted.as_deref() == Some(name) {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
