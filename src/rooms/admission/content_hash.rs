//! Step 3 of admission: the content hash. An event whose signatures are good but whose
//! `hashes.sha256` does not match its content is not refused: the spec says to keep it
//! *redacted* (its content stripped to what the redaction algorithm keeps), since the
//! signed, redacted form is still authentic and other events may cite it.

use weft_protocol::signatures::HashCheck;
use weft_protocol::{Pdu, RoomVersion, redaction};

/// A PDU that passed steps 1–3 (redacted when its hash did not match).
#[derive(Debug, Clone)]
pub struct Checked {
    pub pdu: Pdu,
    pub redacted: bool,
}

/// Applies the outcome of the hash comparison: the PDU as is, or redacted.
pub fn apply(pdu: Pdu, version: RoomVersion, check: HashCheck) -> Result<Checked, String> {
    match check {
        HashCheck::Valid => Ok(Checked {
            pdu,
            redacted: false,
        }),
        HashCheck::ContentMismatch => {
            let redacted = redaction::redact(&pdu.json(), version).map_err(|e| e.to_string())?;
            let id = pdu.owned_event_id();
            let pdu = Pdu::from_json_with_id(id, redacted, version).map_err(|e| e.to_string())?;
            tracing::info!(event = %pdu.event_id(), "content hash mismatch; event redacted");
            Ok(Checked {
                pdu,
                redacted: true,
            })
        }
    }
}
