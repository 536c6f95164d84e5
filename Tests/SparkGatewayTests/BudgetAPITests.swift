import Foundation
import NIOHTTP1
import SparkTesting
import Testing

/// The budget service through the gateway, on every backend: budgets and their bad input,
/// reservations that settle once and release once, reservations of another project, and 200
/// concurrent reservations that never overspend.
@Suite("Budget API")
struct BudgetAPITests {
    struct Project {
        let token: String
        let id: String
        var base: String { "/api/v1/projects/\(self.id)" }
    }

    static func project(_ cluster: TestCluster, _ name: String = "budgets") async throws -> Project {
        let token = try await cluster.adminToken()
        return Project(token: token, id: try await cluster.createProject(name, token: token))
    }

    static func micros(_ value: Any?) -> Int64 { ReservationLoad.micros(value) }

    @Test("budgets are set, read, changed and deleted; bad input names the field", arguments: TestBackend.all)
    func budgets(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            let created = try await cluster.http.send(.PUT, "\(project.base)/budgets/llm", token: project.token, json: ["limitMicros": "5000000", "period": "day"])
            #expect(created.status == 200, "\(created.text)")
            #expect(created.json["created"] as? Bool == true)
            let budget = try #require(created.json["budget"] as? [String: Any])
            #expect(budget["kind"] as? String == "hard")
            #expect(Self.micros(budget["limitMicros"]) == 5_000_000)

            let changed = try await cluster.http.send(.PUT, "\(project.base)/budgets/llm", token: project.token, json: ["limitMicros": "7000000", "period": "day", "kind": "soft"])
            #expect(changed.status == 200 && changed.json["created"] as? Bool != true, "\(changed.text)")
            let got = try await cluster.http.send(.GET, "\(project.base)/budgets/llm", token: project.token)
            #expect(Self.micros(got.json["limitMicros"]) == 7_000_000)
            #expect(got.json["kind"] as? String == "soft")
            // Without a period, a change keeps the budget's period.
            let kept = try await cluster.http.send(.PUT, "\(project.base)/budgets/llm", token: project.token, json: ["limitMicros": "8000000", "kind": "soft"])
            #expect(kept.status == 200, "\(kept.text)")
            let keptBudget = try #require(kept.json["budget"] as? [String: Any])
            #expect(keptBudget["period"] as? String == "day")
            #expect(Self.micros(keptBudget["limitMicros"]) == 8_000_000)

            let badInputs: [([String: Any], String)] = [
                (["limitMicros": "0"], "limitMicros"),
                (["limitMicros": "-5"], "limitMicros"),
                (["limitMicros": "9000000000000000000"], "limitMicros"),
                (["limitMicros": "99999999999999999999"], "limitMicros"),
                (["limitMicros": "100", "kind": "maybe"], "kind"),
                (["limitMicros": "100", "period": "week"], "period"),
                (["limitMicros": "100", "apiKeyId": "nope"], "apiKeyId"),
            ]
            for (body, field) in badInputs {
                let reply = try await cluster.http.send(.PUT, "\(project.base)/budgets/other", token: project.token, json: body)
                #expect(reply.status == 400, "\(body): \(reply.text)")
                #expect(reply.text.contains(field), "\(body): \(reply.text)")
            }
            let period = try await cluster.http.send(.PUT, "\(project.base)/budgets/llm", token: project.token, json: ["limitMicros": "100", "period": "month"])
            #expect(period.status == 409, "\(period.text)")
            let badName = try await cluster.http.send(.PUT, "\(project.base)/budgets/bad%20name", token: project.token, json: ["limitMicros": "100"])
            #expect(badName.status == 400)

            // Another project sees none of it.
            let other = try await Self.project(cluster, "elsewhere")
            #expect(try await cluster.http.send(.GET, "\(other.base)/budgets/llm", token: other.token).status == 404)
            #expect(try await cluster.http.send(.DELETE, "\(other.base)/budgets/llm", token: other.token).status == 404)

            let list = try await cluster.http.send(.GET, "\(project.base)/budgets", token: project.token)
            #expect((list.json["budgets"] as? [[String: Any]])?.count == 1)
            #expect(try await cluster.http.send(.DELETE, "\(project.base)/budgets/llm", token: project.token).status == 200)
            #expect(try await cluster.http.send(.GET, "\(project.base)/budgets/llm", token: project.token).status == 404)
        }
    }

    @Test("a reservation settles once at one amount, releases once, is refused when it does not fit, and is another project's 404", arguments: TestBackend.all)
    func reservations(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            _ = try await cluster.http.send(.PUT, "\(project.base)/budgets/total", token: project.token, json: ["limitMicros": "1000", "period": "total"])
            _ = try await cluster.http.send(.PUT, "\(project.base)/budgets/agent-a", token: project.token, json: ["limitMicros": "600", "agent": "a"])

            let reserved = try await cluster.http.send(.POST, "\(project.base)/reservations", token: project.token, json: ["amountMicros": "500", "attribution": ["agent": "a", "model": "openai/gpt"]])
            #expect(reserved.status == 201, "\(reserved.text)")
            let reservation = try #require(reserved.json["reservation"] as? [String: Any])
            let id = try #require(reservation["id"] as? String)
            #expect((reservation["budgetIds"] as? [String])?.count == 2)

            // The agent's budget has 100 left: 200 does not fit it, though it fits the total.
            let refused = try await cluster.http.send(.POST, "\(project.base)/reservations", token: project.token, json: ["amountMicros": "200", "attribution": ["agent": "a"]])
            #expect(refused.status == 429, "\(refused.text)")
            #expect(refused.text.contains("agent-a"), "\(refused.text)")
            // Nothing of the refused one stays on the total budget.
            let total = try await cluster.http.send(.GET, "\(project.base)/budgets/total", token: project.token)
            let usage = try #require(total.json["usage"] as? [String: Any])
            #expect(Self.micros(usage["reservedMicros"]) == 500)

            let settle = "\(project.base)/reservations/\(id)/settle"
            let first = try await cluster.http.send(.POST, settle, token: project.token, json: ["actualMicros": "300"])
            #expect(first.status == 200, "\(first.text)")
            #expect((first.json["reservation"] as? [String: Any])?["status"] as? String == "settled")
            let again = try await cluster.http.send(.POST, settle, token: project.token, json: ["actualMicros": "300"])
            #expect(again.json["alreadySettled"] as? Bool == true)
            let different = try await cluster.http.send(.POST, settle, token: project.token, json: ["actualMicros": "400"])
            #expect(different.status == 409, "\(different.text)")
            let released = try await cluster.http.send(.POST, "\(project.base)/reservations/\(id)/release", token: project.token, json: [:])
            #expect(released.status == 409)
            let after = try #require(try await cluster.http.send(.GET, "\(project.base)/budgets/total", token: project.token).json["usage"] as? [String: Any])
            #expect(Self.micros(after["spentMicros"]) == 300)
            #expect(Self.micros(after["reservedMicros"]) == 0)

            // A release gives the amount back, once.
            let second = try #require(try await cluster.http.send(.POST, "\(project.base)/reservations", token: project.token, json: ["amountMicros": "250"]).json["reservation"] as? [String: Any])
            let secondID = try #require(second["id"] as? String)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(secondID)/release", token: project.token, json: [:]).json["alreadyReleased"] as? Bool != true)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(secondID)/release", token: project.token, json: [:]).json["alreadyReleased"] as? Bool == true)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(secondID)/settle", token: project.token, json: ["actualMicros": "1"]).status == 409)

            // The ledger: reserve and settle of the first, reserve and release of the second.
            let ledger = try await cluster.http.send(.GET, "\(project.base)/budgets/total/ledger", token: project.token)
            let kinds = (ledger.json["entries"] as? [[String: Any]])?.compactMap { $0["kind"] as? String }
            #expect(kinds == ["release", "reserve", "settle", "reserve"])
            let byModel = try await cluster.http.send(.GET, "\(project.base)/budgets/total/usage?groupBy=model", token: project.token)
            let groups = try #require(byModel.json["groups"] as? [[String: Any]])
            #expect(groups.first?["key"] as? String == "openai/gpt")
            #expect(Self.micros(groups.first?["spentMicros"]) == 300)
            #expect((byModel.json["alerts"] as? [[String: Any]])?.count == nil)

            // Bad input.
            for (body, field) in [(["amountMicros": "0"], "amountMicros"), (["amountMicros": "-1"], "amountMicros"), (["amountMicros": "1000000000001"], "amountMicros"), (["amountMicros": "5", "ttlSeconds": -1], "ttlSeconds")] as [([String: Any], String)] {
                let reply = try await cluster.http.send(.POST, "\(project.base)/reservations", token: project.token, json: body)
                #expect(reply.status == 400, "\(body): \(reply.text)")
                #expect(reply.text.contains(field), "\(body): \(reply.text)")
            }
            #expect(try await cluster.http.send(.POST, settle, token: project.token, json: ["actualMicros": "-3"]).status == 400)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/res_0123/settle", token: project.token, json: ["actualMicros": "3"]).status == 400)
            let unknown = "res_" + String(repeating: "0", count: 32)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(unknown)/settle", token: project.token, json: ["actualMicros": "3"]).status == 404)
            let other = try await Self.project(cluster, "elsewhere")
            #expect(try await cluster.http.send(.POST, "/api/v1/projects/\(other.id)/reservations/\(id)/settle", token: other.token, json: ["actualMicros": "300"]).status == 404)
            #expect(try await cluster.http.send(.GET, "/api/v1/projects/\(other.id)/reservations/\(id)", token: other.token).status == 404)
        }
    }

    @Test("a run's envelope holds its estimate; the run's calls draw on it and give back what they did not spend; it is released at the end", arguments: TestBackend.all)
    func runEnvelopes(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            _ = try await cluster.http.send(.PUT, "\(project.base)/budgets/total", token: project.token, json: ["limitMicros": "1000", "period": "total"])
            let usage = { () async throws -> (spent: Int64, reserved: Int64) in
                let figures = try #require(try await cluster.http.send(.GET, "\(project.base)/budgets/total", token: project.token).json["usage"] as? [String: Any])
                return (Self.micros(figures["spentMicros"]), Self.micros(figures["reservedMicros"]))
            }
            let reserve = { (body: [String: Any]) async throws -> HTTPTestClient.Reply in
                try await cluster.http.send(.POST, "\(project.base)/reservations", token: project.token, json: body)
            }
            let held = try await reserve(["amountMicros": "600", "runEnvelope": true, "attribution": ["runId": "run_a", "workflow": "w"]])
            #expect(held.status == 201, "\(held.text)")
            let envelope = try #require(held.json["reservation"] as? [String: Any])
            let envelopeID = try #require(envelope["id"] as? String)
            #expect(envelope["runEnvelope"] as? Bool == true)
            #expect(try await usage() == (0, 600))

            // Asked again for the same run at the same amount: the same envelope, nothing more held.
            let again = try await reserve(["amountMicros": "600", "runEnvelope": true, "attribution": ["runId": "run_a"]])
            #expect((again.json["reservation"] as? [String: Any])?["id"] as? String == envelopeID, "\(again.text)")
            #expect(try await reserve(["amountMicros": "700", "runEnvelope": true, "attribution": ["runId": "run_a"]]).status == 409)
            #expect(try await usage() == (0, 600))

            // Another run's call has 400 left; 500 does not fit, though the envelope has room.
            let outside = try await reserve(["amountMicros": "500", "attribution": ["runId": "run_b"]])
            #expect(outside.status == 429, "\(outside.text)")
            #expect(outside.text.contains("total"), "\(outside.text)")

            // The run's own call of 500 comes out of the envelope: nothing more is held.
            let call = try await reserve(["amountMicros": "500", "attribution": ["runId": "run_a", "tool": "t"]])
            #expect(call.status == 201, "\(call.text)")
            let callRow = try #require(call.json["reservation"] as? [String: Any])
            #expect(Self.micros(callRow["drawnMicros"]) == 500)
            #expect(callRow["envelopeId"] as? String == envelopeID)
            #expect(try await usage() == (0, 600))
            let left = try await cluster.http.send(.GET, "\(project.base)/reservations/\(envelopeID)", token: project.token)
            #expect(Self.micros(left.json["amountMicros"]) == 100)

            // It spent 200: the 300 it did not spend goes back to the envelope, still held for the run.
            let callID = try #require(callRow["id"] as? String)
            let settled = try await cluster.http.send(.POST, "\(project.base)/reservations/\(callID)/settle", token: project.token, json: ["actualMicros": "200"])
            #expect(settled.status == 200, "\(settled.text)")
            #expect(try await usage() == (200, 400))
            #expect(Self.micros(try await cluster.http.send(.GET, "\(project.base)/reservations/\(envelopeID)", token: project.token).json["amountMicros"]) == 400)

            // A call larger than what is left of the envelope takes all of it, and the rest must fit.
            let big = try await reserve(["amountMicros": "900", "attribution": ["runId": "run_a"]])
            #expect(big.status == 429, "\(big.text)")
            #expect(try await usage() == (200, 400))
            let fits = try await reserve(["amountMicros": "800", "attribution": ["runId": "run_a"]])
            #expect(fits.status == 201, "\(fits.text)")
            #expect(Self.micros((fits.json["reservation"] as? [String: Any])?["drawnMicros"]) == 400)
            #expect(try await usage() == (200, 800))
            let fitsID = try #require((fits.json["reservation"] as? [String: Any])?["id"] as? String)

            // An envelope is released, not settled; released, it holds nothing, and the call that
            // drew on it keeps its own hold until it settles, with nothing given back.
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(envelopeID)/settle", token: project.token, json: ["actualMicros": "1"]).status == 409)
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(envelopeID)/release", token: project.token, json: [:]).status == 200)
            #expect(try await usage() == (200, 800))
            #expect(try await cluster.http.send(.POST, "\(project.base)/reservations/\(fitsID)/release", token: project.token, json: [:]).status == 200)
            #expect(try await usage() == (200, 0))

            let ledger = try await cluster.http.send(.GET, "\(project.base)/budgets/total/ledger", token: project.token)
            let kinds = (ledger.json["entries"] as? [[String: Any]])?.compactMap { $0["kind"] as? String }
            #expect(kinds == ["release", "release", "reserve", "draw", "return", "settle", "reserve", "draw", "reserve"], "\(kinds ?? [])")

            // Bad input: an envelope names its run.
            let unnamed = try await reserve(["amountMicros": "10", "runEnvelope": true])
            #expect(unnamed.status == 400 && unnamed.text.contains("runId"), "\(unnamed.text)")
        }
    }

    @Test("200 concurrent reservations of random sizes never overspend, admit all that fits, and all end settled or released", arguments: TestBackend.all)
    func concurrentReservations(backend: TestBackend) async throws {
        try await TestCluster.run(backend: backend) { cluster in
            let project = try await Self.project(cluster)
            let load = try await ReservationLoad.run(clients: [cluster.http], base: project.base, token: project.token)
            #expect(load.problems.isEmpty, "\(load.problems)")
            #expect(load.admitted.count > 0 && load.admitted.count < 200)
        }
    }
}
