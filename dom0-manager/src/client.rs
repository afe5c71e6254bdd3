//! D-Bus helpers shared by the components: every call goes through domaind's own proxy
//! ([`bulkhead_api::Domaind1Proxy`]); errors become the sentence domaind wrote.

use bulkhead_api::{Domaind1Proxy, Error};

/// A proxy on `conn` (no property cache: the interface has no properties, and skipping it
/// saves a round trip per proxy).
pub async fn proxy(conn: &zbus::Connection) -> Result<Domaind1Proxy<'static>, Error> {
    Ok(Domaind1Proxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// The message to show for a failed call: domaind's sentence, or the bus error.
pub fn describe(e: &Error) -> String {
    match e {
        Error::ZBus(z) => format!("cannot reach domaind: {z}"),
        other => other.message(),
    }
}

/// Human size, MiB with one decimal under 10 MiB.
pub fn format_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if bytes == 0 {
        "-".into()
    } else if mib < 10.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{mib:.0} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(format_bytes(0), "-");
        assert_eq!(format_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(format_bytes(300 * 1024 * 1024), "300 MiB");
    }
}
