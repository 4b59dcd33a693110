//! The corpus: RFC 5424's own examples, real-world RFC 3164 variants and malformed messages,
//! each with the fields it must give.

use super::*;

const NOW: Now = Now { year: 2026, month: 11, offset_minutes: 0 };

/// Expected fields; `None` in a column means "absent".
struct Case {
    input: &'static [u8],
    format: Format,
    pri: Option<(u8, u8)>,
    timestamp: Option<&'static str>,
    hostname: Option<&'static str>,
    app_name: Option<&'static str>,
    procid: Option<&'static str>,
    msgid: Option<&'static str>,
    message: &'static str,
    error: bool,
}

const BASE: Case = Case {
    input: b"",
    format: Format::Rfc3164,
    pri: None,
    timestamp: None,
    hostname: None,
    app_name: None,
    procid: None,
    msgid: None,
    message: "",
    error: false,
};

fn check(c: &Case) -> Record<'static> {
    let r = parse(c.input, NOW);
    let what = String::from_utf8_lossy(c.input);
    assert_eq!(r.format, c.format, "{what}");
    assert_eq!(r.facility.zip(r.severity), c.pri, "pri of {what}");
    assert_eq!(r.timestamp.as_deref(), c.timestamp, "timestamp of {what}");
    assert_eq!(r.hostname.as_deref(), c.hostname, "hostname of {what}");
    assert_eq!(r.app_name.as_deref(), c.app_name, "app_name of {what}");
    assert_eq!(r.procid.as_deref(), c.procid, "procid of {what}");
    assert_eq!(r.msgid.as_deref(), c.msgid, "msgid of {what}");
    assert_eq!(r.message, c.message, "message of {what}");
    assert_eq!(r.parse_error.is_some(), c.error, "parse_error of {what}: {:?}", r.parse_error);
    r
}

#[test]
fn rfc5424_examples() {
    // RFC 5424 §6.5, examples 1–4.
    check(&Case {
        input: b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed for lonvick on /dev/pts/8",
        format: Format::Rfc5424,
        pri: Some((4, 2)),
        timestamp: Some("2003-10-11T22:14:15.003Z"),
        hostname: Some("mymachine.example.com"),
        app_name: Some("su"),
        msgid: Some("ID47"),
        message: "'su root' failed for lonvick on /dev/pts/8",
        ..BASE
    });
    check(&Case {
        input: b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
        format: Format::Rfc5424,
        pri: Some((20, 5)),
        timestamp: Some("2003-08-24T05:14:15.000003-07:00"),
        hostname: Some("192.0.2.1"),
        app_name: Some("myproc"),
        procid: Some("8710"),
        message: "%% It's time to make the do-nuts.",
        ..BASE
    });
    let r = check(&Case {
        input: b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \xEF\xBB\xBFAn application event log entry...",
        format: Format::Rfc5424,
        pri: Some((20, 5)),
        timestamp: Some("2003-10-11T22:14:15.003Z"),
        hostname: Some("mymachine.example.com"),
        app_name: Some("evntslog"),
        msgid: Some("ID47"),
        message: "An application event log entry...",
        ..BASE
    });
    assert_eq!(r.structured_data.len(), 1);
    assert_eq!(r.structured_data[0].id, "exampleSDID@32473");
    assert_eq!(r.structured_data[0].params[1], ("eventSource".into(), "Application".into()));
    let r = check(&Case {
        input: b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"]",
        format: Format::Rfc5424,
        pri: Some((20, 5)),
        timestamp: Some("2003-10-11T22:14:15.003Z"),
        hostname: Some("mymachine.example.com"),
        app_name: Some("evntslog"),
        msgid: Some("ID47"),
        message: "",
        ..BASE
    });
    assert_eq!(r.structured_data[1].params, vec![("class".into(), "high".into())]);
}

#[test]
fn rfc5424_escapes_nilvalues_and_errors() {
    let r = check(&Case {
        input: br#"<14>1 - - - - - [x@1 a="q\"b\\c\]d" e=""] msg"#,
        format: Format::Rfc5424,
        pri: Some((1, 6)),
        message: "msg",
        ..BASE
    });
    assert_eq!(r.structured_data[0].params, vec![("a".into(), r#"q"b\c]d"#.into()), ("e".into(), "".into())]);
    // logger --rfc5424 with no message and no MSGID separator.
    check(&Case {
        input: b"<13>1 2026-11-22T10:00:00.000000+00:00 host app 42 -",
        format: Format::Rfc5424,
        pri: Some((1, 5)),
        timestamp: Some("2026-11-22T10:00:00.000000+00:00"),
        hostname: Some("host"),
        app_name: Some("app"),
        procid: Some("42"),
        message: "",
        ..BASE
    });
    for bad in [
        &b"<13>1 2026-11-22T10:00:00Z host app - - [unterminated a=\"b\" msg"[..],
        b"<13>1 yesterday host app - - - msg",
        b"<13>1 2026-11-22T10:00:00Z host",
    ] {
        let r = parse(bad, NOW);
        assert!(r.parse_error.is_some(), "{}", String::from_utf8_lossy(bad));
        assert_eq!(r.message.as_bytes(), bad, "kept whole");
        assert_eq!(r.facility, Some(1), "the PRI still counts");
    }
}

#[test]
fn rfc3164_variants() {
    // RFC 3164 §5.4 examples.
    check(&Case {
        input: b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        pri: Some((4, 2)),
        timestamp: Some("2026-10-11T22:14:15+00:00"),
        hostname: Some("mymachine"),
        app_name: Some("su"),
        message: "'su root' failed for lonvick on /dev/pts/8",
        ..BASE
    });
    check(&Case {
        input: b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
        pri: Some((1, 5)),
        timestamp: Some("2026-02-05T17:32:18+00:00"),
        hostname: Some("10.0.0.99"),
        message: "Use the BFG!",
        ..BASE
    });
    // logger --rfc3164: tag with PID.
    check(&Case {
        input: b"<13>Nov 22 10:05:01 web-1 root[4242]: deploy finished",
        pri: Some((1, 5)),
        timestamp: Some("2026-11-22T10:05:01+00:00"),
        hostname: Some("web-1"),
        app_name: Some("root"),
        procid: Some("4242"),
        message: "deploy finished",
        ..BASE
    });
    // A December message read in November is this year's; in January, last year's.
    let jan = parse(b"<13>Dec 31 23:59:59 h app: x", Now { year: 2027, month: 1, offset_minutes: 0 });
    assert_eq!(jan.timestamp.as_deref(), Some("2026-12-31T23:59:59+00:00"));
    // No hostname: the tag comes straight after the timestamp.
    check(&Case {
        input: b"<38>Nov 22 10:05:01 sshd[99]: Accepted publickey",
        pri: Some((4, 6)),
        timestamp: Some("2026-11-22T10:05:01+00:00"),
        app_name: Some("sshd"),
        procid: Some("99"),
        message: "Accepted publickey",
        ..BASE
    });
    // No PRI at all.
    check(&Case {
        input: b"Nov 22 10:05:01 host cron[1]: job done",
        timestamp: Some("2026-11-22T10:05:01+00:00"),
        hostname: Some("host"),
        app_name: Some("cron"),
        procid: Some("1"),
        message: "job done",
        ..BASE
    });
    // ISO timestamp (rsyslog's RSYSLOG_ForwardFormat).
    check(&Case {
        input: b"<30>2026-11-22T10:05:01.123456+01:00 host systemd[1]: Started x.",
        pri: Some((3, 6)),
        timestamp: Some("2026-11-22T10:05:01.123456+01:00"),
        hostname: Some("host"),
        app_name: Some("systemd"),
        procid: Some("1"),
        message: "Started x.",
        ..BASE
    });
    // Cisco IOS: sequence number, year, milliseconds, zone, `%FAC-SEV-MNEMONIC:`.
    check(&Case {
        input: b"<189>1234: *Mar  1 2026 18:46:11.123 UTC: %LINK-3-UPDOWN: Interface Gi0/1, changed state to up",
        pri: Some((23, 5)),
        timestamp: Some("2026-03-01T18:46:11.123+00:00"),
        msgid: Some("LINK-3-UPDOWN"),
        message: "Interface Gi0/1, changed state to up",
        ..BASE
    });
    check(&Case {
        input: b"<187>57: router1: Nov 22 10:05:01: %SYS-5-CONFIG_I: Configured from console",
        pri: Some((23, 3)),
        timestamp: Some("2026-11-22T10:05:01+00:00"),
        hostname: Some("router1"),
        msgid: Some("SYS-5-CONFIG_I"),
        message: "Configured from console",
        ..BASE
    });
    // Nothing recognisable after the PRI: the whole rest is the message.
    check(&Case { input: b"<13>just some text", pri: Some((1, 5)), message: "just some text", ..BASE });
}

#[test]
fn senders_variants_of_days_and_tags() {
    // A day written with one space, as many senders do: the header is still read.
    check(&Case {
        input: b"<13>Feb 5 17:32:18 web-1 app: started",
        pri: Some((1, 5)),
        timestamp: Some("2026-02-05T17:32:18+00:00"),
        hostname: Some("web-1"),
        app_name: Some("app"),
        message: "started",
        ..BASE
    });
    // A tag with the text straight after its colon, with and without a hostname.
    check(&Case {
        input: b"<13>Feb 15 17:32:18 web-1 app[1]:msg here",
        pri: Some((1, 5)),
        timestamp: Some("2026-02-15T17:32:18+00:00"),
        hostname: Some("web-1"),
        app_name: Some("app"),
        procid: Some("1"),
        message: "msg here",
        ..BASE
    });
    check(&Case {
        input: b"<13>app[77]:no space",
        pri: Some((1, 5)),
        app_name: Some("app"),
        procid: Some("77"),
        message: "no space",
        ..BASE
    });
    // Text that merely holds `]:` later on is not a tag.
    check(&Case {
        input: b"<13>Feb 15 17:32:18 web-1 hello a[b]:c",
        pri: Some((1, 5)),
        timestamp: Some("2026-02-15T17:32:18+00:00"),
        hostname: Some("web-1"),
        message: "hello a[b]:c",
        ..BASE
    });
}

#[test]
fn every_rfc3164_time_gets_an_offset() {
    // No zone: read in the configured one (here UTC+05:30).
    let india = Now { year: 2026, month: 11, offset_minutes: 330 };
    let r = parse(b"<13>Nov 22 10:05:01 web-1 app: x", india);
    assert_eq!(r.timestamp.as_deref(), Some("2026-11-22T10:05:01+05:30"));
    let iso = parse(b"<13>2026-11-22T10:05:01.5 web-1 app: x", india);
    assert_eq!(iso.timestamp.as_deref(), Some("2026-11-22T10:05:01.5+05:30"));
    // A known abbreviation wins over the configured zone; negative offsets.
    let cisco = parse(b"<189>12: *Mar  1 18:46:11.123 EST: %SYS-5-CONFIG_I: Configured", india);
    assert_eq!(cisco.timestamp.as_deref(), Some("2026-03-01T18:46:11.123-05:00"));
    // An unknown one: the configured zone, the name left in the text.
    let odd = parse(b"<13>Mar  1 18:46:11 XYZT host app: x", india);
    assert_eq!(odd.timestamp.as_deref(), Some("2026-03-01T18:46:11+05:30"));
    // An ISO time that has its zone keeps it.
    let zoned = parse(b"<13>2026-11-22T10:05:01-03:00 web-1 app: x", india);
    assert_eq!(zoned.timestamp.as_deref(), Some("2026-11-22T10:05:01-03:00"));
    // The year: December read in January is last year's; January read in December (a sender
    // whose clock is ahead, or a message sent just after midnight), next year's.
    let january = Now { year: 2027, month: 1, offset_minutes: 0 };
    assert_eq!(parse(b"<13>Dec 31 23:59:59 h a: x", january).timestamp.as_deref(), Some("2026-12-31T23:59:59+00:00"));
    let december = Now { year: 2026, month: 12, offset_minutes: 0 };
    assert_eq!(parse(b"<13>Jan  1 00:00:01 h a: x", december).timestamp.as_deref(), Some("2027-01-01T00:00:01+00:00"));
}

#[test]
fn impossible_dates_and_noise_are_kept_whole_and_flagged() {
    for input in [
        &b"<13>1 2026-02-30T10:00:00Z host app - - - thirtieth of February"[..],
        b"<13>1 2026-13-01T10:00:00Z host app - - - month 13",
        b"<13>1 2026-11-22T24:00:00Z host app - - - hour 24",
        b"\x00\x01\x02binary junk\xff",
        b"\xc3\x28 not utf-8 and no pri",
    ] {
        let r = parse(input, NOW);
        assert!(r.parse_error.is_some(), "{} is flagged", String::from_utf8_lossy(input));
        assert_eq!(r.message.len(), String::from_utf8_lossy(input).len(), "every byte kept");
    }
    // A leap day and a leap second are real.
    for ok in
        [&b"<13>1 2028-02-29T10:00:00Z h a - - - leap day"[..], b"<13>1 2026-12-31T23:59:60Z h a - - - leap second"]
    {
        assert_eq!(parse(ok, NOW).parse_error, None, "{}", String::from_utf8_lossy(ok));
    }
    // Plain text without a PRI is still a message.
    assert_eq!(parse(b"just some text", NOW).parse_error, None);
}

#[test]
fn malformed_messages_are_kept_whole() {
    for bad in [&b"<999>Nov 22 10:05:01 h a: x"[..], b"<>x", b"<13", b"<013>x", b"<1a>x"] {
        let r = parse(bad, NOW);
        assert!(r.parse_error.is_some(), "{}", String::from_utf8_lossy(bad));
        assert_eq!(r.message.as_bytes(), bad);
    }
    let r = parse(b"<13>Nov 22 10:05:01 h app: caf\xC3\xA9 \xFF", NOW);
    assert_eq!(r.message, "café \u{FFFD}", "invalid UTF-8 replaced, not dropped");
    assert_eq!(parse(b"<13>msg\r\n", NOW).message, "msg", "line ends trimmed");
}

proptest::proptest! {
    /// Any bytes parse to a record without panicking; a record with a parse error holds the
    /// whole input.
    #[test]
    fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let r = parse(&bytes, NOW);
        if r.parse_error.is_some() {
            proptest::prop_assert_eq!(r.message, String::from_utf8_lossy(trim_end(&bytes)).into_owned());
        }
    }
}
