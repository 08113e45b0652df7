use super::*;
use crate::dpop::verify::ProofVerifier;

const RSA_PEM: &[u8] = include_bytes!("../../../tests/oidc-provider/test-client-key.pem");
const EC_PEM: &[u8] = include_bytes!("../../../tests/oidc-provider/test-es256-key.pem");

fn parts(proof: &HeaderValue) -> (serde_json::Value, serde_json::Value) {
    let proof = proof.to_str().unwrap();
    let mut parts = proof.split('.');
    let mut decode =
        || serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    (decode(), decode())
}

fn keys() -> Vec<DpopKey> {
    vec![
        DpopKey::generate().unwrap(),
        DpopKey::generate_with(DpopAlgorithm::EdDSA).unwrap(),
        DpopKey::from_pem(DpopAlgorithm::ES256, EC_PEM).unwrap(),
        DpopKey::from_pem(DpopAlgorithm::RS256, RSA_PEM).unwrap(),
        DpopKey::from_pem(DpopAlgorithm::PS256, RSA_PEM).unwrap(),
    ]
}

#[test]
fn every_algorithm_signs_a_proof_the_verifier_accepts() {
    let verifier = ProofVerifier::default();
    let uri: Uri = "https://api.example:8443/v1/items?page=2#frag"
        .parse()
        .unwrap();
    for key in keys() {
        let proof = key.proof(&Method::GET, &uri, Some("the-token")).unwrap();
        assert!(proof.is_sensitive());
        let (header, claims) = parts(&proof);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], key.algorithm().as_str());
        assert!(
            header["jwk"].get("d").is_none(),
            "no private part in the jwk"
        );
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example:8443/v1/items");
        let expected_ath = URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, b"the-token").as_ref());
        assert_eq!(claims["ath"], expected_ath);
        assert!(claims.get("nonce").is_none());
        let verified = verifier
            .verify(
                proof.to_str().unwrap(),
                "GET",
                "https://api.example:8443/v1/items",
                Some("the-token"),
            )
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm()));
        assert_eq!(verified.jkt, key.thumbprint());
        // The same proof a second time is a replay.
        let replay = verifier.verify(
            proof.to_str().unwrap(),
            "GET",
            "https://api.example:8443/v1/items",
            Some("the-token"),
        );
        assert!(replay.unwrap_err().contains("replayed"));
    }
}

#[test]
fn the_verifier_rejects_a_proof_for_another_request_or_token() {
    let verifier = ProofVerifier::default();
    let key = DpopKey::generate().unwrap();
    let uri: Uri = "https://api.example/a".parse().unwrap();
    let proof = |token| key.proof(&Method::POST, &uri, token).unwrap();
    let check = |proof: HeaderValue, method, htu, token| {
        verifier
            .verify(proof.to_str().unwrap(), method, htu, token)
            .unwrap_err()
    };
    let url = "https://api.example/a";
    assert!(check(proof(Some("t")), "GET", url, Some("t")).contains("htm"));
    assert!(check(proof(Some("t")), "POST", "https://api.example/b", Some("t")).contains("htu"));
    assert!(check(proof(Some("t")), "POST", url, Some("other")).contains("ath"));
    assert!(check(proof(None), "POST", url, Some("t")).contains("no ath"));
    // A signature made by another key, under this key's header.
    let other = DpopKey::generate()
        .unwrap()
        .proof(&Method::POST, &uri, None)
        .unwrap();
    let own = proof(None);
    let own = own.to_str().unwrap();
    let forged = format!(
        "{}.{}",
        own.rsplit_once('.').unwrap().0,
        other.to_str().unwrap().rsplit_once('.').unwrap().1
    );
    assert!(verifier
        .verify(&forged, "POST", url, None)
        .unwrap_err()
        .contains("signature"));
}

#[test]
fn proofs_are_unique_and_carry_the_origins_nonce() {
    let key = DpopKey::generate().unwrap();
    let uri: Uri = "https://as.example/token".parse().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("dpop-nonce", "server-nonce-1".parse().unwrap());
    key.nonces().update_from("https", "as.example", &headers);
    let (_, first) = parts(&key.proof(&Method::POST, &uri, None).unwrap());
    let (_, second) = parts(&key.proof(&Method::POST, &uri, None).unwrap());
    assert_ne!(first["jti"], second["jti"]);
    assert_eq!(first["nonce"], "server-nonce-1");
    let elsewhere: Uri = "https://api.example/x".parse().unwrap();
    let (_, claims) = parts(&key.proof(&Method::GET, &elsewhere, Some("t")).unwrap());
    assert!(claims.get("nonce").is_none());
    // Clones share the nonces.
    let (_, claims) = parts(&key.clone().proof(&Method::POST, &uri, None).unwrap());
    assert_eq!(claims["nonce"], "server-nonce-1");
}

#[test]
fn a_relative_uri_and_a_bad_key_are_named_errors_without_the_key() {
    let key = DpopKey::generate().unwrap();
    let err = key
        .proof(&Method::GET, &"/path".parse().unwrap(), None)
        .unwrap_err();
    assert!(err.to_string().contains("absolute URI"), "{err}");
    let err = DpopKey::from_pem(DpopAlgorithm::ES256, RSA_PEM).unwrap_err();
    assert!(err.to_string().contains("ES256"), "{err}");
    assert!(!err.to_string().contains("MII"), "{err}");
    let err = DpopKey::from_pem(DpopAlgorithm::ES256, b"not pem").unwrap_err();
    assert!(err.to_string().contains("PEM"), "{err}");
    assert!(DpopKey::generate_with(DpopAlgorithm::RS256).is_err());
    let debug = format!("{key:?}");
    assert!(
        debug.contains("[redacted]") && debug.contains("ES256"),
        "{debug}"
    );
}

/// A second, independent implementation agrees: jsonwebtoken verifies the proofs against the
/// `jwk` they embed.
#[cfg(feature = "jwt-client-auth")]
#[test]
fn jsonwebtoken_verifies_the_proofs_against_the_embedded_jwk() {
    let uri: Uri = "https://api.example/v1".parse().unwrap();
    for key in keys() {
        let proof = key.proof(&Method::GET, &uri, Some("tok")).unwrap();
        let proof = proof.to_str().unwrap();
        let header = jsonwebtoken::decode_header(proof).unwrap();
        let jwk = header.jwk.expect("jwk header");
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(proof, &decoding, &validation)
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm()));
        assert_eq!(data.claims["htu"], "https://api.example/v1");
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
    }
}

/// Defect 19.6: `htu` kept `user:password@` of the request URI, so the API refused the proof
/// and the password was signed into a JWT sent to the API. RFC 9449 §4.2: `htu` is the target
/// URI without query and fragment; user info is no part of it either. The nonce of the origin
/// is found with or without user info.
#[test]
fn htu_has_no_user_info_query_or_fragment() {
    let key = DpopKey::generate().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("dpop-nonce", "n-1".parse().unwrap());
    key.nonces()
        .update_from("https", "api.example:8443", &headers);
    let uri: Uri = "https://user:s3cr3t@api.example:8443/v1/items?page=2#frag"
        .parse()
        .unwrap();
    let proof = key.proof(&Method::GET, &uri, Some("the-token")).unwrap();
    let (_, claims) = parts(&proof);
    assert_eq!(claims["htu"], "https://api.example:8443/v1/items");
    assert_eq!(claims["nonce"], "n-1");
    assert!(!claims.to_string().contains("s3cr3t"));
    assert!(!claims.to_string().contains("user"));
}

/// RFC 9449 §11.1 (the "smaller" item of issue 19): a `jti` from the system CSPRNG, 128 bits,
/// base64url (it was 128 bits printed from `fastrand`, a generator with 64 bits of state).
#[test]
fn jti_is_128_random_bits() {
    let key = DpopKey::generate().unwrap();
    let uri: Uri = "https://api.example/".parse().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let (_, claims) = parts(&key.proof(&Method::GET, &uri, None).unwrap());
        let jti = claims["jti"].as_str().unwrap().to_string();
        assert_eq!(URL_SAFE_NO_PAD.decode(&jti).unwrap().len(), 16, "{jti}");
        assert!(seen.insert(jti));
    }
}

/// `from_pem` wipes the DER it decoded, whether the key is accepted or not (the docs' promise,
/// as for `ClientIdentity`); here: a key of the wrong algorithm still fails cleanly.
#[test]
fn from_pem_refuses_a_key_of_another_algorithm() {
    let error = DpopKey::from_pem(DpopAlgorithm::ES256, RSA_PEM)
        .err()
        .unwrap();
    assert!(error.to_string().contains("ES256"), "{error}");
    assert!(!error.to_string().contains("PRIVATE"));
}
