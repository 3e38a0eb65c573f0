//! What the hub's listeners share: TLS and its reloads, who is speaking
//! (certificates, trusted proxies), the accept loops and their limits, and
//! files re-read every interval (proxy secret, tokens).

pub mod identity;
pub mod reload;
pub mod secret;
pub mod serve;
pub mod tls;
