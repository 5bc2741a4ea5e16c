//! SIP dialogs (RFC 3261 §12), sans-IO: what one leg of a B2BUA call remembers between
//! transactions: Call-ID, both tags, both CSeq counters, the remote target and the route set.
//!
//! A [`Dialog`] is built from the INVITE and the response that created it (as UAC) or from
//! the received INVITE (as UAS). It builds in-dialog requests (BYE, re-INVITE, UPDATE, INFO,
//! the ACK for a 2xx), checks incoming in-dialog requests (CSeq order), and applies target
//! refreshes. Loose routing only (`;lr`); a strict-routing next hop is refused.

use bytes::Bytes;

use super::build::MessageBuilder;
use super::header::{CSeq, NameAddr};
use super::msg::{HeaderName, Method, SipMessage};
use super::validate::Rejection;

/// Dialog state (§12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialogState {
    /// Created by a provisional response with a To tag.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
    /// Ended by BYE, or by a final non-2xx to the initial INVITE.
    Terminated,
}

/// Why a dialog could not be formed or a message does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DialogError {
    /// A header needed to form the dialog is missing or malformed.
    #[error("missing or malformed {0}")]
    Header(&'static str),
    /// The response carries no To tag, so it cannot create a dialog.
    #[error("response without To tag")]
    NoToTag,
}

/// One dialog of one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our address (From of our requests), without tag.
    pub local_uri: String,
    /// The peer's address (To of our requests), without tag.
    pub remote_uri: String,
    /// Our last CSeq number.
    pub local_seq: u32,
    /// The peer's last CSeq number (none until it sends a request).
    pub remote_seq: Option<u32>,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: String,
    /// Route headers of our in-dialog requests, in order.
    pub route_set: Vec<String>,
    /// State.
    pub state: DialogState,
}

fn header<'a>(
    msg: &'a SipMessage,
    name: HeaderName,
    label: &'static str,
) -> Result<&'a Bytes, DialogError> {
    msg.header(&name)
        .map(|h| &h.value)
        .ok_or(DialogError::Header(label))
}

fn addr(msg: &SipMessage, name: HeaderName, label: &'static str) -> Result<NameAddr, DialogError> {
    NameAddr::parse(header(msg, name, label)?).map_err(|_| DialogError::Header(label))
}

fn contact(msg: &SipMessage) -> Result<String, DialogError> {
    let value = header(msg, HeaderName::Contact, "Contact")?;
    NameAddr::parse_all(value)
        .ok()
        .and_then(|c| c.into_iter().next())
        .map(|c| c.uri)
        .ok_or(DialogError::Header("Contact"))
}

fn record_route(msg: &SipMessage) -> Result<Vec<String>, DialogError> {
    let mut out = Vec::new();
    for h in msg.headers_named(&HeaderName::RecordRoute) {
        let hops =
            NameAddr::parse_all(&h.value).map_err(|_| DialogError::Header("Record-Route"))?;
        out.extend(hops.into_iter().map(|a| format!("<{}>", a.uri)));
    }
    Ok(out)
}

fn cseq(msg: &SipMessage) -> Result<CSeq, DialogError> {
    CSeq::parse(header(msg, HeaderName::CSeq, "CSeq")?).map_err(|_| DialogError::Header("CSeq"))
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Dialog {
    /// The dialog our INVITE `request` created with `response` (a 1xx with a To tag, or a
    /// 2xx): route set from Record-Route, reversed (§12.1.2).
    pub(crate) fn uac(request: &SipMessage, response: &SipMessage) -> Result<Dialog, DialogError> {
        let from = addr(request, HeaderName::From, "From")?;
        let to = addr(response, HeaderName::To, "To")?;
        let remote_tag = to.tag().ok_or(DialogError::NoToTag)?.to_string();
        let mut route_set = record_route(response)?;
        route_set.reverse();
        let dialog = Dialog {
            call_id: text(header(request, HeaderName::CallId, "Call-ID")?),
            local_tag: from
                .tag()
                .ok_or(DialogError::Header("From tag"))?
                .to_string(),
            remote_tag,
            local_uri: from.uri,
            remote_uri: to.uri,
            local_seq: cseq(request)?.seq,
            remote_seq: None,
            remote_target: contact(response)?,
            route_set,
            state: if response.status().is_some_and(|c| c >= 200) {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
        };
        Ok(dialog)
    }

    /// The dialog a received INVITE creates when we answer it with `local_tag`: route set
    /// from Record-Route in order (§12.1.1). It starts Early; [`Dialog::confirm`] on our 2xx.
    ///
    /// An RFC 2543 peer may send no From tag (the remote tag is then null, §12.1.1) and no
    /// Contact (requests then go to its From address, as RFC 2543 did).
    pub(crate) fn uas(request: &SipMessage, local_tag: &str) -> Result<Dialog, DialogError> {
        let from = addr(request, HeaderName::From, "From")?;
        let to = addr(request, HeaderName::To, "To")?;
        let remote_target = match request.header(&HeaderName::Contact) {
            Some(_) => contact(request)?,
            None => from.uri.clone(),
        };
        Ok(Dialog {
            call_id: text(header(request, HeaderName::CallId, "Call-ID")?),
            local_tag: local_tag.to_string(),
            remote_tag: from.tag().unwrap_or_default().to_string(),
            local_uri: to.uri,
            remote_uri: from.uri,
            local_seq: 0,
            remote_seq: Some(cseq(request)?.seq),
            remote_target,
            route_set: record_route(request)?,
            state: DialogState::Early,
        })
    }

    /// The dialog is confirmed by a 2xx (UAC: the 2xx received, with its Contact; UAS: our
    /// own 2xx sent).
    pub(crate) fn confirm(&mut self, response: Option<&SipMessage>) {
        if let Some(c) = response.and_then(|r| contact(r).ok()) {
            self.remote_target = c;
        }
        if self.state == DialogState::Early {
            self.state = DialogState::Confirmed;
        }
    }

    /// The dialog is over.
    pub(crate) fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    fn builder(&self, method: Method, seq: u32, local_contact: Option<&str>) -> MessageBuilder {
        let tagged = |uri: &str, tag: &str| {
            if tag.is_empty() {
                format!("<{uri}>")
            } else {
                format!("<{uri}>;tag={tag}")
            }
        };
        let mut b = match self.route_set.split_first() {
            // The next hop is a strict router (RFC 2543): it gets the request addressed to
            // itself, and the remote target travels as the last Route (§12.2.1.1).
            Some((first, rest)) if !first.contains(";lr") => {
                let hop = first.trim_start_matches('<').trim_end_matches('>');
                let mut b = MessageBuilder::request(method.clone(), hop);
                for route in rest {
                    b = b.header(HeaderName::Route, route.clone());
                }
                b.header(HeaderName::Route, format!("<{}>", self.remote_target))
            }
            _ => {
                let mut b = MessageBuilder::request(method.clone(), &self.remote_target);
                for route in &self.route_set {
                    b = b.header(HeaderName::Route, route.clone());
                }
                b
            }
        };
        b = b
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, tagged(&self.local_uri, &self.local_tag))
            .header(HeaderName::To, tagged(&self.remote_uri, &self.remote_tag))
            .header(HeaderName::CallId, self.call_id.clone())
            .header(HeaderName::CSeq, format!("{seq} {method}"));
        if let Some(c) = local_contact {
            b = b.header(HeaderName::Contact, format!("<{c}>"));
        }
        b
    }

    /// A new in-dialog request (BYE, re-INVITE, UPDATE, INFO, ...), with the next CSeq. The
    /// transaction layer adds the Via. Target-refresh requests carry `local_contact`.
    pub(crate) fn request(
        &mut self,
        method: Method,
        local_contact: Option<&str>,
    ) -> MessageBuilder {
        self.local_seq = self.local_seq.wrapping_add(1).max(1);
        self.builder(method, self.local_seq, local_contact)
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4): its own
    /// transaction, same CSeq number.
    pub(crate) fn ack(&self, invite_seq: u32) -> MessageBuilder {
        self.builder(Method::Ack, invite_seq, None)
    }

    /// Checks a request received in this dialog and applies it (§12.2.2): a CSeq lower than
    /// the last one is answered 500; a re-INVITE or UPDATE with a Contact refreshes the
    /// target; a BYE ends the dialog. ACK and CANCEL reuse their INVITE's CSeq.
    pub(crate) fn receive(&mut self, request: &SipMessage) -> Result<(), Rejection> {
        let method = request.method().cloned().unwrap_or(Method::Options);
        let seq = cseq(request)
            .map_err(|_| reject(400, "Bad Request - malformed CSeq"))?
            .seq;
        if !matches!(method, Method::Ack | Method::Cancel) {
            if let Some(last) = self.remote_seq {
                if seq <= last {
                    return Err(reject(500, "Server Internal Error - CSeq out of order"));
                }
            }
            self.remote_seq = Some(seq);
        }
        if matches!(method, Method::Invite | Method::Update) {
            if let Ok(c) = contact(request) {
                self.remote_target = c;
            }
        }
        if method == Method::Bye {
            self.terminate();
        }
        Ok(())
    }

    /// Whether `msg` belongs to this dialog (Call-ID and both tags match, §12.2).
    pub(crate) fn matches(&self, msg: &SipMessage) -> bool {
        let Ok(call_id) = header(msg, HeaderName::CallId, "Call-ID") else {
            return false;
        };
        let tag = |name, label| {
            addr(msg, name, label)
                .ok()
                .and_then(|a| a.tag().map(str::to_string))
        };
        let (from_tag, to_tag) = (tag(HeaderName::From, "From"), tag(HeaderName::To, "To"));
        let ours_then_theirs = if msg.is_request() {
            (to_tag, from_tag)
        } else {
            (from_tag, to_tag)
        };
        // A missing tag is the null tag of an RFC 2543 peer.
        call_id[..] == *self.call_id.as_bytes()
            && ours_then_theirs.0.as_deref() == Some(&self.local_tag)
            && ours_then_theirs.1.unwrap_or_default() == self.remote_tag
    }
}

fn reject(status: u16, reason: &str) -> Rejection {
    Rejection {
        status,
        reason: reason.to_string(),
        unsupported: Vec::new(),
    }
}

/// The Request-URI of a request, as text.
pub(crate) fn request_uri(msg: &SipMessage) -> Option<String> {
    use super::msg::StartLine;
    match &msg.start {
        StartLine::Request { uri, .. } => Some(text(uri)),
        StartLine::Response { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::msg::parse_datagram;

    fn invite() -> SipMessage {
        MessageBuilder::request(Method::Invite, "sip:+4930123456@pbx.example.com")
            .header(
                HeaderName::Via,
                "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-d1",
            )
            .header(HeaderName::MaxForwards, "70")
            .header(
                HeaderName::From,
                "<sip:+4915112345678@wa.example.net>;tag=ours",
            )
            .header(HeaderName::To, "<sip:+4930123456@pbx.example.com>")
            .header(HeaderName::CallId, "dlg-1@192.0.2.10")
            .header(HeaderName::CSeq, "7 INVITE")
            .header(HeaderName::Contact, "<sip:waswitch@192.0.2.10:5060>")
            .header(
                HeaderName::RecordRoute,
                "<sip:p2.example.com;lr>, <sip:p1.example.com;lr>",
            )
            .build()
    }

    /// The far end's answer: the request's Record-Route copied into it, as RFC 3261
    /// §12.1.1 has a UAS do.
    fn ok(req: &SipMessage) -> SipMessage {
        MessageBuilder::response_to(req, 200, "OK", Some("theirs"))
            .header(
                HeaderName::Contact,
                "<sip:agent@192.0.2.20:5070;transport=udp>",
            )
            .build()
    }

    #[test]
    fn uac_dialog_builds_bye_and_ack_along_the_reversed_route_set() {
        let req = invite();
        let mut d = Dialog::uac(&req, &ok(&req)).unwrap();
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(
            d.route_set,
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(d.remote_target, "sip:agent@192.0.2.20:5070;transport=udp");
        let ack = parse_datagram(d.ack(7).build().to_bytes()).unwrap();
        assert_eq!(
            request_uri(&ack).as_deref(),
            Some("sip:agent@192.0.2.20:5070;transport=udp")
        );
        assert_eq!(
            cseq(&ack).unwrap(),
            CSeq {
                seq: 7,
                method: Method::Ack
            }
        );
        let bye = parse_datagram(d.request(Method::Bye, None).build().to_bytes()).unwrap();
        assert_eq!(cseq(&bye).unwrap().seq, 8);
        let routes: Vec<_> = bye
            .headers_named(&HeaderName::Route)
            .map(|h| text(&h.value))
            .collect();
        assert_eq!(
            routes,
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        let from = addr(&bye, HeaderName::From, "From").unwrap();
        let to = addr(&bye, HeaderName::To, "To").unwrap();
        assert_eq!((from.tag(), to.tag()), (Some("ours"), Some("theirs")));
        // The peer's BYE to us matches the dialog; a stranger's does not.
        let their_bye = MessageBuilder::request(Method::Bye, "sip:waswitch@192.0.2.10:5060")
            .header(
                HeaderName::From,
                "<sip:+4930123456@pbx.example.com>;tag=theirs",
            )
            .header(
                HeaderName::To,
                "<sip:+4915112345678@wa.example.net>;tag=ours",
            )
            .header(HeaderName::CallId, "dlg-1@192.0.2.10")
            .header(HeaderName::CSeq, "100 BYE")
            .build();
        assert!(d.matches(&their_bye));
        let mut other = their_bye.clone();
        other.headers.retain(|h| h.name != HeaderName::CallId);
        other
            .headers
            .push(crate::sip::msg::Header::new(HeaderName::CallId, "other"));
        assert!(!d.matches(&other));
        d.receive(&their_bye).unwrap();
        assert_eq!(d.state, DialogState::Terminated);
    }

    #[test]
    fn uas_dialog_orders_cseq_and_refreshes_the_target() {
        let req = invite();
        let mut d = Dialog::uas(&req, "uas-tag").unwrap();
        assert_eq!(d.state, DialogState::Early);
        assert_eq!(
            d.route_set,
            ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        assert_eq!(d.remote_target, "sip:waswitch@192.0.2.10:5060");
        d.confirm(None);
        assert_eq!(d.state, DialogState::Confirmed);
        let in_dialog = |method: Method, seq: u32, contact: Option<&str>| {
            let mut b = MessageBuilder::request(method.clone(), "sip:x@192.0.2.20")
                .header(
                    HeaderName::From,
                    "<sip:+4915112345678@wa.example.net>;tag=ours",
                )
                .header(
                    HeaderName::To,
                    "<sip:+4930123456@pbx.example.com>;tag=uas-tag",
                )
                .header(HeaderName::CallId, "dlg-1@192.0.2.10")
                .header(HeaderName::CSeq, format!("{seq} {method}"));
            if let Some(c) = contact {
                b = b.header(HeaderName::Contact, c.to_string());
            }
            b.build()
        };
        assert!(d.matches(&in_dialog(Method::Bye, 8, None)));
        // re-INVITE moves the peer.
        d.receive(&in_dialog(
            Method::Invite,
            8,
            Some("<sip:moved@192.0.2.99>"),
        ))
        .unwrap();
        assert_eq!(d.remote_target, "sip:moved@192.0.2.99");
        // Its ACK reuses CSeq 8; an old or repeated CSeq on a new request gets 500.
        d.receive(&in_dialog(Method::Ack, 8, None)).unwrap();
        let err = d.receive(&in_dialog(Method::Info, 8, None)).unwrap_err();
        assert_eq!(err.status, 500);
        d.receive(&in_dialog(Method::Update, 9, None)).unwrap();
        // Our own first request in the dialog starts our CSeq at 1.
        let bye = d.request(Method::Bye, None).build();
        assert_eq!(cseq(&bye).unwrap().seq, 1);
        assert_eq!(request_uri(&bye).as_deref(), Some("sip:moved@192.0.2.99"));
    }

    #[test]
    fn dialogs_need_a_to_tag_and_route_strict_routers_as_rfc_3261_says() {
        // A request with no Record-Route: the answer's alone is the route set.
        let mut req = invite();
        req.headers.retain(|h| h.name != HeaderName::RecordRoute);
        let no_tag = MessageBuilder::response_to(&req, 180, "Ringing", None)
            .header(HeaderName::Contact, "<sip:a@192.0.2.20>")
            .build();
        assert_eq!(Dialog::uac(&req, &no_tag), Err(DialogError::NoToTag));
        let strict = MessageBuilder::response_to(&req, 180, "Ringing", Some("t"))
            .header(HeaderName::Contact, "<sip:a@192.0.2.20>")
            .header(
                HeaderName::RecordRoute,
                "<sip:loose.example.com;lr>, <sip:strict.example.com>",
            )
            .build();
        // Reversed: the strict router is our next hop.
        let mut d = Dialog::uac(&req, &strict).unwrap();
        let bye = d.request(Method::Bye, None).build();
        assert_eq!(request_uri(&bye).as_deref(), Some("sip:strict.example.com"));
        let routes: Vec<String> = bye
            .headers_named(&HeaderName::Route)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .collect();
        assert_eq!(routes, ["<sip:loose.example.com;lr>", "<sip:a@192.0.2.20>"]);
        let early = MessageBuilder::response_to(&req, 183, "Session Progress", Some("t"))
            .header(HeaderName::Contact, "<sip:a@192.0.2.20>")
            .build();
        let mut d = Dialog::uac(&req, &early).unwrap();
        assert_eq!(d.state, DialogState::Early);
        d.confirm(Some(&ok(&req)));
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.remote_target, "sip:agent@192.0.2.20:5070;transport=udp");
    }
}

#[cfg(test)]
mod rfc2543_tests {
    use super::*;
    use crate::sip::msg::parse_datagram;

    /// RFC 4475 §3.4.1: an RFC 2543 INVITE (no From tag, no Contact, no branch cookie)
    /// forms a dialog with a null remote tag; our requests in it carry no To tag and go to
    /// the From address, and the peer's own requests (still tagless) match it.
    #[test]
    fn an_rfc_2543_invite_forms_a_dialog_with_a_null_remote_tag() {
        let invite = parse_datagram(Bytes::from_static(
            b"INVITE sip:UserB@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP iftgw.example.com\r\n\
From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\
To: sip:+16505552222@ss1.example.net;user=phone\r\n\
Call-ID: inv2543.1717@ift.client.example.com\r\n\
CSeq: 56 INVITE\r\n\
Content-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let mut d = Dialog::uas(&invite, "ours").unwrap();
        assert_eq!(d.remote_tag, "");
        let bye = d.request(Method::Bye, None).build();
        assert_eq!(
            request_uri(&bye).as_deref(),
            Some("sip:+13035551111@ift.client.example.net;user=phone")
        );
        let to = String::from_utf8_lossy(&bye.header(&HeaderName::To).unwrap().value).into_owned();
        assert!(!to.contains("tag="), "{to}");
        let their_bye = parse_datagram(Bytes::from_static(
            b"BYE sip:UserB@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP iftgw.example.com\r\n\
From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\
To: <sip:+16505552222@ss1.example.net>;tag=ours\r\n\
Call-ID: inv2543.1717@ift.client.example.com\r\n\
CSeq: 57 BYE\r\n\
Content-Length: 0\r\n\r\n",
        ))
        .unwrap();
        assert!(d.matches(&their_bye));
    }
}
