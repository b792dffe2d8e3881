//! A join with a certificate request gets a certificate of the cluster CA
//! for the credential's host only, with its name and migration address;
//! a bad request or address is refused with 400; the CA is made once in
//! the server's data directory and kept across restarts.

use std::sync::Arc;

use vdc_api::tls::CaState;
use vdc_api::{router, AppState};
use vdc_client::Client;
use vdc_store::RedbStore;
use vdc_types::auth::JoinResponse;
use vdc_types::migration::MigrationEncryption;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn serve(dir: &std::path::Path) -> (String, Client) {
    let store = RedbStore::open(dir.join("state.redb")).await.unwrap();
    let ca = CaState::open(dir).await.unwrap();
    let app = router(
        AppState::open(Arc::new(store), TOKEN)
            .await
            .unwrap()
            .with_ca(ca),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::new(&url, Some(TOKEN.into()));
    (url, client)
}

async fn join(url: &str, credential: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/api/v1/agent/join"))
        .bearer_auth(credential)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_join_gets_a_certificate_for_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let (url, client) = serve(dir.path()).await;
    let cred = client.add_host("host-1").await.unwrap().credential;
    let key = vdc_pki::HostKey::generate().unwrap();
    // The request asks for another name: the certificate names host-1.
    let csr = key.csr_pem("somebody-else").unwrap();
    let r = join(
        &url,
        &cred,
        serde_json::json!({"host": "host-1", "csr": csr, "migration_address": "10.77.0.11"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let answer: JoinResponse = r.json().await.unwrap();
    let tls = answer.tls.expect("a certificate");
    let info = vdc_pki::cert_info(&tls.cert_pem).unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some("host-1"));
    assert_eq!(info.sans, ["DNS:host-1", "IP:10.77.0.11"]);
    assert_eq!(info.public_key_der, key.public_key_der());
    assert_eq!(info.not_after_ms, tls.not_after_ms);
    assert!(vdc_pki::verify_issued_by(&tls.cert_pem, &tls.ca_cert_pem).unwrap());
    let ca_file = std::fs::read_to_string(dir.path().join("ca/ca-cert.pem")).unwrap();
    assert_eq!(ca_file, tls.ca_cert_pem);

    // Without a request, no certificate; a garbled one or an address that
    // is not an IP address: 400.
    let plain: JoinResponse = join(&url, &cred, serde_json::json!({"host": "host-1"}))
        .await
        .json()
        .await
        .unwrap();
    assert!(plain.tls.is_none());
    let r = join(
        &url,
        &cred,
        serde_json::json!({"host": "host-1", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = join(
        &url,
        &cred,
        serde_json::json!({"host": "host-1", "csr": key.csr_pem("host-1").unwrap(), "migration_address": "host-1.example"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: vdc_types::ApiError = r.json().await.unwrap();
    assert!(e.message.contains("not an IP address"), "{}", e.message);
    // Another host's name with this credential: 403, nothing signed.
    let r = join(
        &url,
        &cred,
        serde_json::json!({"host": "host-2", "csr": key.csr_pem("host-2").unwrap()}),
    )
    .await;
    assert_eq!(r.status(), 403);

    // The settings show the CA; the setting is stored.
    let v = client.migration_settings().await.unwrap();
    assert_eq!(v.encryption, MigrationEncryption::Off);
    let ca = v.ca.expect("the CA");
    assert_eq!(
        ca.fingerprint,
        vdc_pki::cert_info(&ca_file).unwrap().fingerprint
    );
    let v = client
        .set_migration_settings(&vdc_types::migration::SetMigrationSettingsRequest {
            encryption: MigrationEncryption::On,
        })
        .await
        .unwrap();
    assert_eq!(v.encryption, MigrationEncryption::On);

    // The CA is kept: a second server on the same data directory signs
    // with the same one.
    let again = CaState::open(dir.path()).await.unwrap();
    assert_eq!(again.summary().fingerprint, ca.fingerprint);
}
