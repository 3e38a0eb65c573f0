//! Forward compatibility: what a newer peer may send still decodes here.
//!
//! The bytes a newer version would produce are built by hand with prost's
//! encoding functions, appending fields this version does not know.

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, string, uint64};
use scale_agent_proto::v1::{
    AgentFrame, EventType, Hello, HubFrame, ObjectEvent, ShardRef, agent_frame, hub_frame,
};

fn hello() -> Hello {
    Hello {
        protocol_version: 1,
        shard: Some(ShardRef {
            namespace: "spinnaker".into(),
            name: "prod-east".into(),
        }),
        replica_id: "prod-east-agent-0".into(),
        agent_version: "0.1.0".into(),
        capabilities: vec![],
    }
}

#[test]
fn unknown_fields_are_skipped() {
    let mut bytes = hello().encode_to_vec();
    // A varint, a string and a nested message at numbers v1 does not use.
    uint64::encode(60, &7, &mut bytes);
    string::encode(61, &"from a newer agent".to_owned(), &mut bytes);
    let nested = hello().encode_to_vec();
    encode_key(62, WireType::LengthDelimited, &mut bytes);
    encode_varint(nested.len() as u64, &mut bytes);
    bytes.extend_from_slice(&nested);

    let decoded = Hello::decode(bytes.as_slice()).expect("unknown fields are skipped");
    assert_eq!(decoded, hello());
}

#[test]
fn unknown_fields_inside_a_frame_are_skipped() {
    let mut inner = hello().encode_to_vec();
    string::encode(99, &"new hello field".to_owned(), &mut inner);
    let mut bytes = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut bytes); // AgentFrame.hello
    encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);

    let decoded = AgentFrame::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded.frame, Some(agent_frame::Frame::Hello(hello())));
}

#[test]
fn an_unknown_frame_kind_decodes_as_an_unset_oneof() {
    // A frame kind added after v1's first release, e.g. AgentFrame field 40.
    let mut bytes = Vec::new();
    string::encode(40, &"payload".to_owned(), &mut bytes);
    let agent = AgentFrame::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(agent.frame, None);
    let hub = HubFrame::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(hub.frame, None);
}

#[test]
fn an_unknown_frame_kind_does_not_hide_a_known_one() {
    // The receiver keeps the last oneof member it understands.
    let mut bytes = HubFrame {
        frame: Some(hub_frame::Frame::Heartbeat(Default::default())),
    }
    .encode_to_vec();
    string::encode(40, &"payload".to_owned(), &mut bytes);
    let hub = HubFrame::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(
        hub.frame,
        Some(hub_frame::Frame::Heartbeat(Default::default()))
    );
}

#[test]
fn an_unknown_enum_value_reads_as_unspecified() {
    let event = ObjectEvent {
        r#type: 42, // an EventType added later
        name: "web".into(),
        ..Default::default()
    };
    let decoded = ObjectEvent::decode(event.encode_to_vec().as_slice()).expect("decodes");
    // The raw number is kept (it can be passed on); the typed getter falls back.
    assert_eq!(decoded.r#type, 42);
    assert_eq!(decoded.r#type(), EventType::Unspecified);
    assert_eq!(decoded.name, "web");
}
