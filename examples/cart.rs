//! A shopping cart on Chorus, written the way an application should use the client library:
//! read, change, write back with the context (so concurrent writers leave siblings that the
//! application merges, instead of silently losing one), plus a counter and a set that merge by
//! themselves.
//!
//! Start a local cluster (`chorus dev`), then:
//!
//! ```text
//! cargo run --example cart -- alice apple pear                  # over HTTP
//! cargo run --example cart -- --quic chorus-dev/ca/ca.pem bob fig  # over QUIC
//! ```
//!
//! In another crate, depend on `chorus` with `default-features = false, features = ["client"]`
//! (no RocksDB, no server) and copy this file.

use std::collections::BTreeSet;

use chorus::client::{Client, Config, Error, Protocol, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut config = Config::new(["127.0.0.1:7200", "127.0.0.1:7201", "127.0.0.1:7202"]);
    if args.first().map(String::as_str) == Some("--quic") {
        args.remove(0);
        let ca = args.remove(0);
        config.protocol = Protocol::Quic;
        config.ca_pem = Some(std::fs::read_to_string(&ca).expect("readable CA certificate"));
    }
    let (user, items) = match args.split_first() {
        Some((user, items)) if !items.is_empty() => (user.clone(), items.to_vec()),
        _ => {
            eprintln!("usage: cart [--quic CA.pem] USER ITEM...");
            std::process::exit(2);
        }
    };
    let client = Client::connect(config).await?;
    let key = format!("cart:{user}");

    // Read-modify-write. Siblings (two devices adding at once) are merged here, by the
    // application, which knows that a cart is a union of items.
    let read = client.get(&key).await?;
    let mut cart: BTreeSet<String> = BTreeSet::new();
    for value in read.value.values() {
        cart.extend(
            String::from_utf8_lossy(value)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    if let Value::Siblings(all) = &read.value {
        println!("merged {} concurrent versions of the cart", all.len());
    }
    cart.extend(items.iter().cloned());
    let joined = cart.iter().cloned().collect::<Vec<_>>().join(",");
    // The context says which versions this write replaces.
    let written = client.put(&key, joined, read.context.as_ref()).await?;
    println!("{key}: {cart:?} ({} replicas acknowledged)", written.acks);

    // CRDTs need no merging by the application.
    let views = client.incr(format!("visits:{user}"), 1).await?;
    println!("visits: {:?}", views.value);
    let seen = client.set_add("items-ever-added", items).await?;
    println!("items ever added: {:?}", seen.value);
    Ok(())
}
