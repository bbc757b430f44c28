//! The DNS wire format (RFC 1035, EDNS0 from RFC 6891, SRV from RFC 2782), as much as a stub
//! resolver needs: one question out, the answer records of its type back. Pure: bytes in,
//! records or why not out.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// What we tell the server a UDP answer may be (EDNS0); larger answers come truncated and are
/// asked again over TCP.
pub const UDP_PAYLOAD: u16 = 4096;

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv { port: u16, target: String },
}

/// Why an answer is of no use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("name {0:?} is not a valid DNS name")]
    BadName(String),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("answer to another question (id {0})")]
    OtherId(u16),
    #[error("server answered {0}")]
    Rcode(&'static str),
}

/// A parsed answer: its records of the asked type, whether it was truncated, whether the name
/// does not exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<Record>,
    pub truncated: bool,
    pub nxdomain: bool,
}

/// A recursive query for `name` (absolute, with or without its final dot) of `qtype`, with
/// an EDNS0 record offering `UDP_PAYLOAD`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let mut q = Vec::with_capacity(name.len() + 30);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // 1 question, 1 additional (OPT)
    encode_name(name, &mut q)?;
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q.push(0); // OPT: the root name
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // extended rcode and flags, no options
    Ok(q)
}

fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    let bad = || WireError::BadName(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Parses the answer to query `id` of `qtype`: the answer section's records of that type
/// (a CNAME chain's final records included, as recursive servers send them).
pub fn parse(msg: &[u8], id: u16, qtype: u16) -> Result<Answer, WireError> {
    let mut r = Reader { msg, pos: 0 };
    let got = r.u16()?;
    if got != id {
        return Err(WireError::OtherId(got));
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(WireError::Malformed("not a response"));
    }
    let truncated = flags & 0x0200 != 0;
    let mut answer = Answer {
        truncated,
        ..Answer::default()
    };
    match flags & 0x000f {
        0 => {}
        3 => {
            answer.nxdomain = true;
            return Ok(answer);
        }
        1 => return Err(WireError::Rcode("FORMERR")),
        2 => return Err(WireError::Rcode("SERVFAIL")),
        4 => return Err(WireError::Rcode("NOTIMP")),
        5 => return Err(WireError::Rcode("REFUSED")),
        _ => return Err(WireError::Rcode("an error")),
    }
    let (qd, an) = (r.u16()?, r.u16()?);
    r.skip(4)?; // authority and additional counts: not read
    for _ in 0..qd {
        r.name()?;
        r.skip(4)?;
    }
    for _ in 0..an {
        if truncated && r.pos >= msg.len() {
            break;
        }
        r.name()?;
        let (rtype, class) = (r.u16()?, r.u16()?);
        r.skip(4)?; // TTL: every refresh asks again
        let len = r.u16()? as usize;
        let end = r.pos + len;
        if end > msg.len() {
            return Err(WireError::Malformed("record past the end"));
        }
        if class == CLASS_IN && rtype == qtype {
            let data = &msg[r.pos..end];
            let record = match rtype {
                TYPE_A => Record::A(Ipv4Addr::from(
                    <[u8; 4]>::try_from(data).map_err(|_| WireError::Malformed("A length"))?,
                )),
                TYPE_AAAA => Record::Aaaa(Ipv6Addr::from(
                    <[u8; 16]>::try_from(data).map_err(|_| WireError::Malformed("AAAA length"))?,
                )),
                TYPE_SRV => {
                    let mut s = Reader {
                        msg,
                        pos: r.pos + 4,
                    };
                    let port = s.u16()?;
                    let target = s.name()?;
                    if s.pos > end {
                        return Err(WireError::Malformed("SRV past its record"));
                    }
                    Record::Srv { port, target }
                }
                _ => return Err(WireError::Malformed("unsupported question type")),
            };
            answer.records.push(record);
        }
        // Other records (the CNAME chain before the asked records) are skipped.
        r.pos = end;
    }
    Ok(answer)
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self
            .msg
            .get(self.pos..self.pos + 2)
            .ok_or(WireError::Malformed("short message"))?;
        self.pos += 2;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn skip(&mut self, n: usize) -> Result<(), WireError> {
        if self.pos + n > self.msg.len() {
            return Err(WireError::Malformed("short message"));
        }
        self.pos += n;
        Ok(())
    }

    /// A name, following compression pointers (each must point backwards, so a loop ends).
    fn name(&mut self) -> Result<String, WireError> {
        let mut out = String::new();
        let mut at = self.pos;
        let mut resume = None;
        let mut limit = at;
        loop {
            let len = *self
                .msg
                .get(at)
                .ok_or(WireError::Malformed("name past the end"))? as usize;
            match len & 0xc0 {
                0x00 => {
                    if len == 0 {
                        at += 1;
                        break;
                    }
                    let label = self
                        .msg
                        .get(at + 1..at + 1 + len)
                        .ok_or(WireError::Malformed("label past the end"))?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&String::from_utf8_lossy(label));
                    if out.len() > 255 {
                        return Err(WireError::Malformed("name too long"));
                    }
                    at += 1 + len;
                }
                0xc0 => {
                    let low = *self
                        .msg
                        .get(at + 1)
                        .ok_or(WireError::Malformed("pointer past the end"))?
                        as usize;
                    let to = ((len & 0x3f) << 8) | low;
                    if to >= limit {
                        return Err(WireError::Malformed("name pointer loop"));
                    }
                    resume.get_or_insert(at + 2);
                    limit = to;
                    at = to;
                }
                _ => return Err(WireError::Malformed("unknown label type")),
            }
        }
        self.pos = resume.unwrap_or(at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An answer as a server writes it: the question, then records whose owner name is a
    /// pointer to it.
    fn answer(id: u16, flags: u16, q: &str, qtype: u16, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&(records.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        encode_name(q, &mut m).unwrap();
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        for (t, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn query_is_the_rfc_1035_layout() {
        let q = query(0xbeef, "api.shop.svc.", TYPE_A).unwrap();
        let mut want = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        want.extend_from_slice(b"\x03api\x04shop\x03svc\x00\x00\x01\x00\x01");
        want.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(q, want);
        for bad in ["", ".", "a..b", &"x".repeat(64), "ü.de"] {
            assert!(query(1, bad, TYPE_A).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_aaaa_and_srv_records_are_read_and_cnames_skipped() {
        let cname = (TYPE_CNAME, b"\x01b\x00".to_vec());
        let m = answer(
            7,
            0x8180,
            "a.test",
            TYPE_A,
            &[
                cname.clone(),
                (TYPE_A, vec![10, 0, 0, 1]),
                (TYPE_A, vec![10, 0, 0, 2]),
            ],
        );
        let a = parse(&m, 7, TYPE_A).unwrap();
        assert_eq!(
            a.records,
            vec![
                Record::A([10, 0, 0, 1].into()),
                Record::A([10, 0, 0, 2].into())
            ]
        );
        let six: Ipv6Addr = "fd00::1".parse().unwrap();
        let m = answer(
            8,
            0x8180,
            "a.test",
            TYPE_AAAA,
            &[(TYPE_AAAA, six.octets().to_vec())],
        );
        assert_eq!(
            parse(&m, 8, TYPE_AAAA).unwrap().records,
            vec![Record::Aaaa(six)]
        );
        // priority 0, weight 5, port 9100, target "h" then a pointer to the question's name.
        let srv = vec![0, 0, 0, 5, 0x23, 0x8c, 1, b'h', 0xc0, 12];
        let m = answer(9, 0x8180, "_m._tcp.a.test", TYPE_SRV, &[(TYPE_SRV, srv)]);
        assert_eq!(
            parse(&m, 9, TYPE_SRV).unwrap().records,
            vec![Record::Srv {
                port: 9100,
                target: "h._m._tcp.a.test".into()
            }]
        );
    }

    #[test]
    fn errors_and_nxdomain_are_told_apart() {
        let nx = parse(&answer(1, 0x8183, "a.test", TYPE_A, &[]), 1, TYPE_A).unwrap();
        assert!(nx.nxdomain && nx.records.is_empty());
        let tc = parse(&answer(1, 0x8380, "a.test", TYPE_A, &[]), 1, TYPE_A).unwrap();
        assert!(tc.truncated);
        assert_eq!(
            parse(&answer(1, 0x8182, "a.test", TYPE_A, &[]), 1, TYPE_A),
            Err(WireError::Rcode("SERVFAIL"))
        );
        assert_eq!(
            parse(&answer(2, 0x8180, "a.test", TYPE_A, &[]), 1, TYPE_A),
            Err(WireError::OtherId(2))
        );
        let short = parse(
            &answer(1, 0x8180, "a.test", TYPE_A, &[(TYPE_A, vec![1, 2, 3])]),
            1,
            TYPE_A,
        );
        assert_eq!(short, Err(WireError::Malformed("A length")));
        // A pointer to itself.
        let mut looped = answer(1, 0x8180, "a.test", TYPE_A, &[(TYPE_A, vec![1, 2, 3, 4])]);
        looped[12] = 0xc0;
        looped[13] = 12;
        assert!(parse(&looped, 1, TYPE_A).is_err());
    }

    proptest! {
        /// Whatever a server (or an attacker on the path) sends, parsing ends without a panic.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]), TYPE_SRV);
        }
    }
}
