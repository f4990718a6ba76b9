//! `forwarding` and `gue_port` of a backend service: L4 settings, each meaningful only with
//! the method it belongs to (a field that would be ignored is refused instead).

use super::{
    types::{BackendService, Forwarding},
    validate::Err,
};

pub fn check(bs: &BackendService, p: &str, err: &mut Err<'_>) {
    if !bs.protocol.is_l4() && bs.forwarding != Forwarding::L2Dsr {
        err(
            format!("{p}.forwarding"),
            "forwarding applies to TCP/UDP backend services (the L7 tier proxies)".into(),
        );
    }
    match bs.gue_port {
        Some(_) if bs.forwarding != Forwarding::Gue => err(
            format!("{p}.gue_port"),
            "gue_port applies only with forwarding = \"GUE\"".into(),
        ),
        Some(0) => err(format!("{p}.gue_port"), "must be 1..=65535".into()),
        _ => {}
    }
    if bs.forwarding.is_routed() {
        for (i, b) in bs.backends.iter().enumerate() {
            if b.mac.is_some() {
                err(
                    format!("{p}.backends[{i}].mac"),
                    format!(
                        "a {} backend's next hop comes from the routing table; mac applies to L2_DSR only",
                        bs.forwarding.name()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn errors(extra: &str, backend: &str) -> String {
        let t = format!(
            "[backend_services.s]\nprotocol = \"TCP\"\n{extra}\n[[backend_services.s.backends]]\naddress = \"10.1.0.5\"\n{backend}\n"
        );
        match crate::model::parse(&t) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn routed_methods_are_accepted_with_their_own_fields_only() {
        assert_eq!(errors("forwarding = \"IPIP\"", ""), "");
        assert_eq!(errors("forwarding = \"GUE\"\ngue_port = 7000", ""), "");
        assert!(
            errors("forwarding = \"IPIP\"\ngue_port = 7000", "").contains("gue_port applies only")
        );
        assert!(errors("gue_port = 7000", "").contains("gue_port applies only"));
        assert!(errors("forwarding = \"GUE\"\ngue_port = 0", "").contains("1..=65535"));
        assert!(
            errors("forwarding = \"GUE\"", "mac = \"02:00:00:00:00:01\"")
                .contains("mac applies to L2_DSR only")
        );
        assert!(errors("forwarding = \"VXLAN\"", "").contains("forwarding"));
    }

    #[test]
    fn l7_services_do_not_take_a_forwarding_method() {
        let t = "[backend_services.s]\nprotocol = \"HTTP\"\nforwarding = \"GUE\"\n[[backend_services.s.backends]]\naddress = \"10.1.0.5\"\nport = 80\n";
        let e = crate::model::parse(t).unwrap_err().to_string();
        assert!(e.contains("forwarding applies to TCP/UDP"), "{e}");
    }
}
