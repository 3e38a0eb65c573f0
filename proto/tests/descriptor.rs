//! The embedded descriptor set: it describes the service, and the .proto keeps
//! the documentation and conventions the file header promises.

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use scale_agent_proto::FILE_DESCRIPTOR_SET;

fn agent_proto() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the embedded set decodes");
    set.file
        .into_iter()
        .find(|f| f.name() == "scaleagent/v1/agent.proto")
        .expect("agent.proto is in the set")
}

#[test]
fn describes_the_bidirectional_connect_rpc() {
    let file = agent_proto();
    assert_eq!(file.package(), "scaleagent.v1");
    let service = &file.service[0];
    assert_eq!(service.name(), "AgentHub");
    let connect = &service.method[0];
    assert_eq!(connect.name(), "Connect");
    assert_eq!(connect.input_type(), ".scaleagent.v1.AgentFrame");
    assert_eq!(connect.output_type(), ".scaleagent.v1.HubFrame");
    assert!(connect.client_streaming() && connect.server_streaming());
}

#[test]
fn enums_start_with_unspecified_zero() {
    for e in agent_proto().enum_type {
        let first = &e.value[0];
        assert_eq!(first.number(), 0, "{}", e.name());
        assert!(first.name().ends_with("_UNSPECIFIED"), "{}", e.name());
    }
}

#[test]
fn every_element_is_commented() {
    // Paths as in descriptor.proto: 4 = message_type, 2 = field, 8 = oneof_decl,
    // 5 = enum_type, 2 = value, 6 = service, 2 = method.
    let file = agent_proto();
    let info = file.source_code_info.clone().expect("source info kept");
    let commented = |path: &[i32]| {
        info.location
            .iter()
            .any(|l| l.path == path && !l.leading_comments().trim().is_empty())
    };
    let mut missing = Vec::new();
    for (m, message) in file.message_type.iter().enumerate() {
        let m = m as i32;
        if !commented(&[4, m]) {
            missing.push(message.name().to_owned());
        }
        for (f, field) in message.field.iter().enumerate() {
            if !commented(&[4, m, 2, f as i32]) {
                missing.push(format!("{}.{}", message.name(), field.name()));
            }
        }
        for (o, oneof) in message.oneof_decl.iter().enumerate() {
            // proto3 `optional` makes a synthetic oneof that has no source.
            if !oneof.name().starts_with('_') && !commented(&[4, m, 8, o as i32]) {
                missing.push(format!("{}.{}", message.name(), oneof.name()));
            }
        }
    }
    for (e, enumeration) in file.enum_type.iter().enumerate() {
        let e = e as i32;
        if !commented(&[5, e]) {
            missing.push(enumeration.name().to_owned());
        }
        for (v, value) in enumeration.value.iter().enumerate() {
            if !commented(&[5, e, 2, v as i32]) {
                missing.push(value.name().to_owned());
            }
        }
    }
    for (s, service) in file.service.iter().enumerate() {
        if !commented(&[6, s as i32]) {
            missing.push(service.name().to_owned());
        }
        for (r, method) in service.method.iter().enumerate() {
            if !commented(&[6, s as i32, 2, r as i32]) {
                missing.push(method.name().to_owned());
            }
        }
    }
    assert!(missing.is_empty(), "uncommented: {missing:?}");
}
