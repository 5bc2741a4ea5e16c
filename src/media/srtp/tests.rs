use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// RFC 3711 appendix B.3's master key and salt (libsrtp's test key too).
fn rfc_key() -> MasterKey {
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    key.copy_from_slice(&unhex("E1F97A0D3E018BE0D64FA32C06DE4139"));
    salt.copy_from_slice(&unhex("0EC675AD498AFEEBB6960B3AABE6"));
    MasterKey::new(key, salt)
}

#[test]
fn session_keys_derive_as_rfc_3711_b3_lists_them() {
    let master = rfc_key();
    let prf = Aes128::new(&master.key.into());
    let mut enc = [0u8; 16];
    let mut auth = [0u8; 20];
    let mut salt = [0u8; 14];
    derive_into(&prf, &master.salt, 0, &mut enc);
    derive_into(&prf, &master.salt, 1, &mut auth);
    derive_into(&prf, &master.salt, 2, &mut salt);
    assert_eq!(enc.to_vec(), unhex("C61E7A93744F39EE10734AFE3FF7A087"));
    assert_eq!(
        auth.to_vec(),
        unhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
    assert_eq!(salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));
}

#[test]
fn the_keystream_is_rfc_3711_b2s() {
    let keys = SessionKeys {
        cipher: Aes128::new(
            &<[u8; 16]>::try_from(unhex("2B7E151628AED2A6ABF7158809CF4F3C"))
                .expect("16")
                .into(),
        ),
        salt: <[u8; 14]>::try_from(unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")).expect("14"),
        auth: <HmacSha1 as Mac>::new_from_slice(&[0u8; 20]).expect("key"),
    };
    let mut zeros = [0u8; 48];
    keys.crypt(0, 0, &mut zeros);
    assert_eq!(
        zeros.to_vec(),
        unhex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )
    );
}

const PLAIN_RTP: &str = "800f1234decafbadcafebabe abababababababababababababababab";
const PROTECTED_RTP: &str =
    "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 b78d6acc99ea179b8dbb";
const PLAIN_RTCP: &str = "81c8000bcafebabe abababababababababababababababab";
const PROTECTED_RTCP: &str =
    "81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 993e08cd54d6c1230798";

#[test]
fn packets_protect_byte_for_byte_as_libsrtps_reference_and_back() {
    let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_80, &rfc_key());
    let plain = unhex(PLAIN_RTP);
    let mut buf = [0u8; 64];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtp(&mut buf, plain.len()).expect("protect");
    assert_eq!(buf[..n].to_vec(), unhex(PROTECTED_RTP));
    let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_80, &rfc_key());
    let m = rx.unprotect_rtp(&mut buf[..n]).expect("unprotect");
    assert_eq!(buf[..m].to_vec(), plain);

    let plain = unhex(PLAIN_RTCP);
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtcp(&mut buf, plain.len()).expect("protect");
    assert_eq!(buf[..n].to_vec(), unhex(PROTECTED_RTCP));
    let m = rx.unprotect_rtcp(&mut buf[..n]).expect("unprotect");
    assert_eq!(buf[..m].to_vec(), plain);
}

fn rtp(seq: u16, ssrc: u32, payload: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[payload; 160]);
    p
}

fn protect(tx: &mut SrtpSender, packet: &[u8]) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.extend_from_slice(&[0u8; MAX_TRAILER]);
    let n = tx.protect_rtp(&mut buf, packet.len()).expect("protect");
    buf.truncate(n);
    buf
}

#[test]
fn both_suites_round_trip_across_a_sequence_wrap_with_reordering() {
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
        let key = MasterKey::random().expect("random");
        let mut tx = SrtpSender::new(suite, &key);
        let mut rx = SrtpReceiver::new(suite, &key);
        // 65_530 .. 65_535, 0 .. 9: the rollover counter goes to 1 on both sides; two
        // packets swap places across the wrap.
        let mut seqs: Vec<u16> = (65_530..=65_535).chain(0..10).collect();
        seqs.swap(5, 6);
        for seq in seqs {
            let packet = rtp(seq, 0x1234_5678, seq as u8);
            let mut wire = protect(&mut tx, &packet);
            assert_eq!(wire.len(), packet.len() + suite.rtp_tag());
            assert_ne!(wire[12..packet.len()], packet[12..], "encrypted");
            let n = rx.unprotect_rtp(&mut wire).expect("unprotect");
            assert_eq!(wire[..n], packet[..], "{suite:?} seq {seq}");
        }
        assert_eq!(rx.index.roc, 1);
    }
}

#[test]
fn forged_damaged_replayed_and_foreign_packets_are_refused_and_change_nothing() {
    let key = MasterKey::random().expect("random");
    let other = MasterKey::random().expect("random");
    let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_80, &key);
    let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_80, &key);
    let first = protect(&mut tx, &rtp(1, 7, 1));
    let mut ok = first.clone();
    rx.unprotect_rtp(&mut ok).expect("first");
    // Replayed.
    let mut again = first.clone();
    assert_eq!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replay));
    // Damaged: one bit of the payload.
    let mut damaged = protect(&mut tx, &rtp(2, 7, 2));
    damaged[20] ^= 1;
    let kept = damaged.clone();
    assert_eq!(rx.unprotect_rtp(&mut damaged), Err(SrtpError::Auth));
    assert_eq!(damaged, kept, "a refused packet is left as it came");
    // Another key.
    let mut foreign = protect(
        &mut SrtpSender::new(Suite::AesCm128HmacSha1_80, &other),
        &rtp(3, 7, 3),
    );
    assert_eq!(rx.unprotect_rtp(&mut foreign), Err(SrtpError::Auth));
    // Too short, or not RTP.
    assert_eq!(rx.unprotect_rtp(&mut [0x80; 8]), Err(SrtpError::Short));
    // The stream goes on: packet 2 sent again intact is taken, then too-old ones are not.
    let mut two = protect(&mut tx, &rtp(2, 7, 2));
    rx.unprotect_rtp(&mut two).expect("2");
    for seq in 3..100 {
        let mut p = protect(&mut tx, &rtp(seq, 7, 0));
        rx.unprotect_rtp(&mut p).expect("in order");
    }
    let mut old = protect(&mut tx, &rtp(10, 7, 0));
    assert_eq!(rx.unprotect_rtp(&mut old), Err(SrtpError::Replay));
    // No room for the tag.
    let packet = rtp(5, 7, 0);
    let mut tight = packet.clone();
    assert_eq!(
        tx.protect_rtp(&mut tight, packet.len()),
        Err(SrtpError::NoRoom)
    );
}

#[test]
fn a_crypto_line_parses_and_prints_and_refuses_what_cannot_be_used() {
    let line = "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20";
    let c = Crypto::parse(line).expect("parses");
    assert_eq!(c.tag, 1);
    assert_eq!(c.suite, Suite::AesCm128HmacSha1_80);
    assert_eq!(
        c.line(),
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
    );
    assert_eq!(Crypto::parse(&c.line()).expect("again"), c);
    // The key never shows in a debug print.
    let shown = format!("{c:?}");
    assert!(!shown.contains("PS1uQ"), "{shown}");
    assert!(matches!(
        Crypto::parse("1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
        Err(CryptoError::Suite(_))
    ));
    assert!(matches!(
        Crypto::parse(&format!("{line}|1:4")),
        Err(CryptoError::Parameter(_))
    ));
    assert!(matches!(
        Crypto::parse("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTP"),
        Err(CryptoError::Parameter(_))
    ));
    for bad in [
        "",
        "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "1 AES_CM_128_HMAC_SHA1_80",
        "1 AES_CM_128_HMAC_SHA1_80 PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "1 AES_CM_128_HMAC_SHA1_80 inline:short",
        "1 AES_CM_128_HMAC_SHA1_80 inline:@@@@",
    ] {
        assert!(Crypto::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn header_extensions_and_csrcs_stay_in_the_clear() {
    let key = MasterKey::random().expect("random");
    let mut tx = SrtpSender::new(Suite::AesCm128HmacSha1_32, &key);
    let mut rx = SrtpReceiver::new(Suite::AesCm128HmacSha1_32, &key);
    // One CSRC and a one-word header extension.
    let mut packet = vec![0x91, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 42];
    packet.extend_from_slice(&[1, 2, 3, 4]);
    packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]);
    packet.extend_from_slice(&[0x55; 40]);
    let mut wire = protect(&mut tx, &packet);
    assert_eq!(wire[..24], packet[..24], "header, CSRC and extension");
    assert_ne!(wire[24..64], packet[24..]);
    let n = rx.unprotect_rtp(&mut wire).expect("unprotect");
    assert_eq!(wire[..n], packet[..]);
}

#[test]
fn an_offer_is_answered_with_its_first_usable_line_and_a_fresh_key_of_ours() {
    let offered = vec![
        "1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".to_string(),
        "2 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^31"
            .to_string(),
        "3 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".to_string(),
    ];
    let k = answer(&offered).expect("usable");
    assert_eq!(k.theirs.tag, 2);
    assert_eq!(k.ours.tag, 2);
    assert_eq!(k.ours.suite, Suite::AesCm128HmacSha1_32);
    assert_ne!(k.ours.key, k.theirs.key, "a key of our own");
    // Their sender and our receiver agree, and the other way round.
    let (mut our_tx, mut our_rx) = k.contexts();
    let mut their_tx = SrtpSender::new(k.theirs.suite, &k.theirs.key);
    let mut their_rx = SrtpReceiver::new(k.ours.suite, &k.ours.key);
    let packet = rtp(1, 9, 1);
    let mut wire = protect(&mut their_tx, &packet);
    assert_eq!(
        our_rx.unprotect_rtp(&mut wire).map(|n| wire[..n].to_vec()),
        Ok(packet.clone())
    );
    let mut wire = protect(&mut our_tx, &packet);
    assert_eq!(
        their_rx
            .unprotect_rtp(&mut wire)
            .map(|n| wire[..n].to_vec()),
        Ok(packet)
    );
    // Nothing usable: why, line by line (the offer gets 488).
    let why = answer(&offered[..1]).expect_err("unusable");
    assert!(why.contains("AES_256_CM_HMAC_SHA1_80"), "{why}");
    assert_eq!(answer(&[]).expect_err("none"), "no a=crypto line");
}
