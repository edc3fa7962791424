//! The IMDSv2 client and the interruption watcher against the project's own metadata server.

use std::time::{Duration, Instant};

use hotspot_node::providers::ec2::imds::fake_server::FakeImds;
use hotspot_node::providers::ec2::imds::watcher::{self, Notice};
use hotspot_node::providers::ec2::imds::{IdentityOverrides, Imds, ImdsSettings, InstanceIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn identity() -> InstanceIdentity {
    InstanceIdentity {
        instance_id: "i-0123456789abcdef0".into(),
        instance_type: "m5.large".into(),
        zone: "eu-west-1b".into(),
        region: "eu-west-1".into(),
    }
}

async fn server() -> FakeImds {
    FakeImds::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), identity()).unwrap()
}

fn client(fake: &FakeImds) -> Imds {
    Imds::new(&ImdsSettings { endpoint: fake.endpoint(), ..ImdsSettings::default() }).unwrap()
}

/// One raw HTTP exchange, to see what the server itself enforces.
async fn raw(fake: &FakeImds, request: &str) -> String {
    let addr = fake.endpoint().trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn identity_comes_from_imdsv2_and_overrides_win() {
    let fake = server().await;
    let imds = client(&fake);
    assert_eq!(imds.identity(&IdentityOverrides::default()).await.unwrap(), identity());
    assert!(fake.tokens_issued() >= 1);
    assert_eq!(fake.rejected_requests(), 0, "the client sent the TTL header and the token");

    let overrides = IdentityOverrides { zone: Some("eu-west-1c".into()), ..IdentityOverrides::default() };
    let id = imds.identity(&overrides).await.unwrap();
    assert_eq!((id.zone.as_str(), id.instance_type.as_str()), ("eu-west-1c", "m5.large"));
    fake.shutdown().await;
}

#[tokio::test]
async fn server_enforces_token_and_ttl_header() {
    let fake = server().await;
    let no_ttl = raw(&fake, "PUT /latest/api/token HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").await;
    assert!(no_ttl.starts_with("HTTP/1.1 400"), "{no_ttl}");
    let no_token = raw(&fake, "GET /latest/meta-data/instance-id HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(no_token.starts_with("HTTP/1.1 401"), "{no_token}");
    let tok = raw(
        &fake,
        "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(tok.starts_with("HTTP/1.1 200") && tok.contains("x-aws-ec2-metadata-token-ttl-seconds: 60"), "{tok}");
    let token = tok.rsplit("\r\n\r\n").next().unwrap();
    let got =
        raw(&fake, &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"))
            .await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("i-0123456789abcdef0"), "{got}");
    assert_eq!(fake.rejected_requests(), 2);
}

#[tokio::test]
async fn unreachable_metadata_service_says_so() {
    // A port nothing listens on: the error names the path and hints at the overrides.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = ImdsSettings {
        endpoint: format!("http://127.0.0.1:{port}"),
        timeout_ms: 300,
        max_attempts: 1,
        ..Default::default()
    };
    let err = Imds::new(&settings).unwrap().identity(&IdentityOverrides::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("instance-id") && text.contains("overrides"), "{text}");
    // With every value configured the service is never asked.
    let all = IdentityOverrides {
        instance_id: Some("i-1".into()),
        instance_type: Some("t3.micro".into()),
        zone: Some("us-east-1a".into()),
        region: None,
    };
    let err = Imds::new(&settings).unwrap().identity(&all).await.unwrap_err(); // region is still asked
    assert!(err.to_string().contains("placement/region"), "{err}");
    let all = IdentityOverrides { region: Some("us-east-1".into()), ..all };
    assert_eq!(Imds::new(&settings).unwrap().identity(&all).await.unwrap().region, "us-east-1");
}

#[tokio::test]
async fn watcher_sees_switched_on_notices_within_one_poll() {
    let fake = server().await;
    let interval = Duration::from_millis(300);
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = watcher::spawn(client(&fake), interval, tx, cancel.clone());

    // Quiet instance: a few polls, no notice.
    assert!(tokio::time::timeout(interval * 3, rx.recv()).await.is_err());

    fake.set_spot_action(Some(("terminate", "2026-11-22T06:02:00Z")));
    let switched = Instant::now();
    let notice = tokio::time::timeout(interval * 2, rx.recv()).await.expect("no notice within one poll").unwrap();
    let took = switched.elapsed();
    assert_eq!(notice, Notice::SpotInterruption { action: "terminate".into(), time: "2026-11-22T06:02:00Z".into() });
    // One poll interval plus the request itself.
    assert!(took <= interval + Duration::from_millis(150), "took {took:?} with a {interval:?} poll");

    // The same notice is not repeated on every poll; a new one is.
    assert!(tokio::time::timeout(interval * 3, rx.recv()).await.is_err());
    fake.set_rebalance(Some("2026-11-22T06:00:00Z"));
    let notice = tokio::time::timeout(interval * 2, rx.recv()).await.unwrap().unwrap();
    assert_eq!(notice, Notice::Rebalance { notice_time: "2026-11-22T06:00:00Z".into() });

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("watcher stops on cancel").unwrap();
    fake.shutdown().await;
}
