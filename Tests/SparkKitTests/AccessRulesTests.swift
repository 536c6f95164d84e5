import GRPCCore
import SparkKit
import SparkProto
import Testing

/// The pure rules behind roles and partial updates.
@Suite("Access rules and update masks")
struct AccessRulesTests {
    static let roles: [Sparkops_Common_V1_Role] = [.viewer, .runner, .approver, .editor, .admin, .owner]

    static func permissions(_ role: Sparkops_Common_V1_Role) -> Set<String> {
        Set(Permission.minimumRole.keys.filter { Permission.role(role, allows: $0) })
    }

    @Test("a capped key holds exactly the permissions both roles hold, for every pair")
    func lesserIsTheIntersection() {
        for a in Self.roles {
            for b in Self.roles {
                let capped = Permission.lesser(a, b)
                #expect(Self.permissions(capped) == Self.permissions(a).intersection(Self.permissions(b)), "\(a.name) ∧ \(b.name) = \(capped.name)")
                #expect(Permission.lesser(b, a) == capped)
            }
        }
        #expect(Permission.lesser(.runner, .approver) == .viewer)
    }

    @Test("a caller manages roles at most its own; only an owner manages an owner")
    func mayManage() {
        for caller in Self.roles {
            for target in Self.roles {
                #expect(Permission.role(caller, mayManage: target) == (target.rawValue <= caller.rawValue), "\(caller.name) → \(target.name)")
            }
        }
        #expect(!Permission.role(.admin, mayManage: .owner))
        #expect(Permission.role(.owner, mayManage: .owner))
    }

    @Test("an update mask takes proto or JSON names, refuses others naming update_mask, and may be empty")
    func updateMask() throws {
        let mask = try UpdateMask(["displayName", "description"], allowed: ["display_name", "description"])
        #expect(mask.fields == ["display_name", "description"])
        #expect(mask.contains("display_name") && !mask.isEmpty)
        #expect(try UpdateMask([], allowed: ["name"]).isEmpty)
        #expect {
            try UpdateMask(["name", "owner"], allowed: ["name"])
        } throws: { error in
            let error = error as? SparkError
            return error?.code == .invalidArgument && error?.field == "update_mask" && error?.message.contains("\"owner\"") == true
        }
        for (proto, json) in [("display_name", "displayName"), ("name", "name"), ("a_b_c", "aBC"), ("page_token", "pageToken")] {
            #expect(UpdateMask.jsonName(proto) == json)
            #expect(UpdateMask.protoName(json) == proto)
        }
    }
}
