import Foundation
import SparkExpr
import SparkKit
import SparkWorkflow
import Subprocess
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// Loads a page in headless Chromium (Debian's `chromium`) and returns its text, its HTML (the
/// DOM after scripts ran) or a PNG screenshot.
///
/// The page's URL is checked by the outbound guard before Chromium starts. Chromium then reaches
/// the network only through a SOCKS5 proxy of this run (``GuardProxy``), which checks every
/// connection (subresources and redirects included) and connects to the address it checked; its
/// own resolver is told to resolve nothing, so it has no other way out. Each run has a fresh
/// profile in a directory of its own, runs as the sandbox's unprivileged uid when the service is
/// root, under a process limit and the tool's timeout.
struct BrowserRunner: Sendable {
    let chromium: String?
    let sandbox: CodeSandbox
    let outbound: OutboundGuard

    static func find(_ configured: String?) -> String? {
        if let configured { return configured }
        return CodeSandbox.find(["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/lib/chromium/chromium"])
    }

    func run(_ spec: ToolDefinition.Browser, url: String, timeout: Duration, maxBytes: Int) async throws(ToolRunner.Failure) -> ExprValue {
        do {
            _ = try await self.outbound.check(url: url)
        } catch {
            throw ToolRunner.Failure(reason: "outbound_refused", message: error.message)
        }
        if let host = URLComponents(string: url)?.host, !spec.allow.isEmpty, !GuardedHTTPClient.host(host, isIn: spec.allow) {
            throw ToolRunner.Failure(reason: "outbound_refused", message: "\(host) is not among the hosts this tool may reach (browser.allow)")
        }
        guard let chromium = self.chromium else {
            throw ToolRunner.Failure(reason: "browser_missing", message: "Chromium is not installed on the tool service's host (Debian: apt-get install chromium), or set tool.chromiumPath")
        }
        let proxy: GuardProxy
        do {
            proxy = try await GuardProxy.start(outbound: self.outbound, allow: spec.allow)
        } catch {
            throw ToolRunner.Failure(reason: "sandbox", message: "cannot start the browser's proxy: \(error)")
        }
        let outcome: Swift.Result<ExprValue, ToolRunner.Failure>
        do throws(ToolRunner.Failure) {
            outcome = .success(try await self.sandbox.slots.run { (slot) async throws(ToolRunner.Failure) -> ExprValue in
                // The browser's profile folder: its own, 0700, the slot's user's alone.
                let owner = self.sandbox.dropTo.map { uid_t($0.firstUID + slot) }
                let directory: String
                do { directory = try CodeSandbox.makeDirectory(owner: owner) } catch {
                    throw ToolRunner.Failure(reason: "sandbox", message: "cannot prepare the browser's directory: \(error)")
                }
                defer {
                    if let owner { ProcessSweep.kill(uid: owner) }
                    try? FileManager.default.removeItem(atPath: directory)
                }
                return try await self.load(spec, url: url, chromium: chromium, proxy: proxy, directory: directory, slot: slot, timeout: timeout, maxBytes: maxBytes)
            })
        } catch {
            outcome = .failure(error)
        }
        await proxy.stop()
        await OrphanReaper.reap(uid: nil, within: .milliseconds(0))
        return try outcome.get()
    }

    static func flags(proxyPort: Int) -> [String] {
        [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--proxy-server=socks5://127.0.0.1:\(proxyPort)", "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only",
            "--no-pings", "--disable-quic", "--disable-extensions", "--disable-component-extensions-with-background-pages",
            "--disable-features=OptimizationHints,OptimizationGuideModelDownloading,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,DialMediaRouteProvider",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp", "--mute-audio", "--hide-scrollbars", "--password-store=basic",
            "--disable-dev-shm-usage",
        ]
    }

    private func load(
        _ spec: ToolDefinition.Browser, url: String, chromium: String, proxy: GuardProxy, directory: String, slot: Int,
        timeout: Duration, maxBytes: Int
    ) async throws(ToolRunner.Failure) -> ExprValue {
        let profile = "\(directory)/profile"
        let shot = "\(directory)/page.png"
        var arguments: [String] = []
        if let drop = self.sandbox.dropTo {
            let uid = drop.firstUID + slot
            try? FileManager.default.createDirectory(atPath: profile, withIntermediateDirectories: true)
            chown(directory, uid_t(uid), gid_t(uid))
            chown(profile, uid_t(uid), gid_t(uid))
            arguments += [drop.setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "--"]
        }
        arguments += [self.sandbox.prlimitPath, "--nproc=512", "--core=0", "--", chromium]
        arguments += Self.flags(proxyPort: proxy.port) + ["--user-data-dir=\(profile)", "--window-size=\(spec.width),\(spec.height)"]
        if spec.wait.milliseconds > 0 { arguments.append("--virtual-time-budget=\(spec.wait.milliseconds)") }
        arguments.append(spec.format == .screenshot ? "--screenshot=\(shot)" : "--dump-dom")
        arguments.append(url)

        var configuration = CodeSandbox.configuration(arguments)
        configuration.environment = .custom(["PATH": "/usr/bin:/bin", "HOME": directory, "LANG": "C.UTF-8"])
        let state = LoadState()
        let status: TerminationStatus
        do {
            status = try await Subprocess.run(configuration, input: .none, output: .sequence, error: .discarded) { execution in
                let timer = Task {
                    try? await Task.sleep(for: timeout)
                    guard !Task.isCancelled else { return }
                    state.killed.withLock { $0 = ToolRunner.Failure(reason: "timeout", message: "the page did not load within \(timeout)") }
                    try? execution.send(signal: .kill, toProcessGroup: true)
                }
                do {
                    for try await buffer in execution.standardOutput {
                        let over = state.stdout.withLock { collected -> Bool in
                            collected += buffer.withUnsafeBytes { Array($0) }
                            return collected.count > maxBytes
                        }
                        if over {
                            state.killed.withLock { $0 = ToolRunner.Failure(reason: "output_limit", message: "the page's HTML is larger than \(maxBytes) bytes") }
                            try? execution.send(signal: .kill, toProcessGroup: true)
                            break
                        }
                    }
                } catch {}
                timer.cancel()
            }.terminationStatus
        } catch {
            throw ToolRunner.Failure(reason: "sandbox", message: "Chromium could not start: \(error)")
        }
        if let failure = state.killed.withLock({ $0 }) { throw failure }
        let refusals = proxy.refusals.withLock { $0 }
        let html = String(decoding: state.stdout.withLock { $0 }, as: UTF8.self)
        // A screenshot of a page that failed would be a picture of Chromium's error page: a
        // refused page itself fails the call in every format.
        let components = URLComponents(string: url)
        let page = "\(components?.host?.trimmingCharacters(in: CharacterSet(charactersIn: "[]")) ?? ""):\(components?.port ?? (components?.scheme == "https" ? 443 : 80))"
        let pageRefused = refusals.contains { $0.hasPrefix(page + ":") }
        let failed = spec.format == .screenshot ? !FileManager.default.fileExists(atPath: shot) : Self.isErrorPage(html)
        if failed || (spec.format == .screenshot && pageRefused) {
            if let first = refusals.first(where: { !$0.contains("the browser's own services") }) {
                throw ToolRunner.Failure(reason: "outbound_refused", message: first)
            }
            let code = html.range(of: #"net::ERR_[A-Z_]+|ERR_[A-Z_]+"#, options: .regularExpression).map { String(html[$0]) } ?? "no page"
            throw ToolRunner.Failure(reason: "http_error", message: "the page did not load (\(code))")
        }
        guard case .exited(0) = status else {
            throw ToolRunner.Failure(reason: "exit_status", message: "Chromium ended with \(status)")
        }
        let blocked: ExprValue = .list(refusals.filter { !$0.contains("the browser's own services") }.prefix(20).map(ExprValue.string))
        switch spec.format {
        case .html:
            return .map(["url": .string(url), "title": .string(Self.title(html)), "html": .string(html), "blocked": blocked])
        case .text:
            return .map(["url": .string(url), "title": .string(Self.title(html)), "text": .string(Self.text(html)), "blocked": blocked])
        case .screenshot:
            guard let data = FileManager.default.contents(atPath: shot) else {
                throw ToolRunner.Failure(reason: "invalid_output", message: "Chromium wrote no screenshot")
            }
            guard data.count * 4 / 3 <= maxBytes else {
                throw ToolRunner.Failure(reason: "output_limit", message: "the screenshot is \(data.count) bytes, over the cap of \(maxBytes) as base64")
            }
            return .map([
                "url": .string(url), "png": .string(data.base64EncodedString()), "width": .int(Int64(spec.width)),
                "height": .int(Int64(spec.height)), "blocked": blocked,
            ])
        }
    }

    /// What Chromium printed, and why it was stopped.
    final class LoadState: Sendable {
        let stdout = Mutex<[UInt8]>([])
        let killed = Mutex<ToolRunner.Failure?>(nil)
    }

    /// Chromium's page for a navigation that failed.
    static func isErrorPage(_ html: String) -> Bool {
        html.isEmpty || html.contains("id=\"main-frame-error\"") || html.contains("neterror") && html.contains("ERR_")
    }

    static func title(_ html: String) -> String {
        guard let open = html.range(of: "<title", options: .caseInsensitive),
              let start = html.range(of: ">", range: open.upperBound ..< html.endIndex),
              let end = html.range(of: "</title>", options: .caseInsensitive, range: start.upperBound ..< html.endIndex)
        else { return "" }
        return Self.decodeEntities(String(html[start.upperBound ..< end.lowerBound])).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// What a reader sees of the page: no scripts, styles or markup; blocks on lines of their own.
    static func text(_ html: String) -> String {
        var body = html
        for tag in ["script", "style", "noscript", "template", "head", "svg"] {
            body = body.replacingOccurrences(of: "<\(tag)\\b[^>]*>[\\s\\S]*?</\(tag)>", with: " ", options: [.regularExpression, .caseInsensitive])
        }
        body = body.replacingOccurrences(of: "<!--[\\s\\S]*?-->", with: " ", options: .regularExpression)
        body = body.replacingOccurrences(of: "<(br|/p|/div|/h[1-6]|/li|/tr|/section|/article|/header|/footer|/ul|/ol|/table|/blockquote|/pre)\\b[^>]*>", with: "\n", options: [.regularExpression, .caseInsensitive])
        body = body.replacingOccurrences(of: "<[^>]+>", with: " ", options: .regularExpression)
        body = Self.decodeEntities(body)
        return body.split(separator: "\n").map { line in
            line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\u{A0}" }).joined(separator: " ")
        }.filter { !$0.isEmpty }.joined(separator: "\n")
    }

    static func decodeEntities(_ text: String) -> String {
        guard text.contains("&") else { return text }
        var result = ""
        var rest = Substring(text)
        let named = ["amp": "&", "lt": "<", "gt": ">", "quot": "\"", "apos": "'", "nbsp": "\u{A0}", "#39": "'"]
        while let amp = rest.firstIndex(of: "&") {
            result += rest[..<amp]
            let after = rest[rest.index(after: amp)...]
            if let semi = after.prefix(10).firstIndex(of: ";") {
                let name = String(after[..<semi])
                var decoded: String?
                if let value = named[name] {
                    decoded = value
                } else if name.hasPrefix("#x") || name.hasPrefix("#X"), let code = UInt32(name.dropFirst(2), radix: 16), let scalar = Unicode.Scalar(code) {
                    decoded = String(Character(scalar))
                } else if name.hasPrefix("#"), let code = UInt32(name.dropFirst()), let scalar = Unicode.Scalar(code) {
                    decoded = String(Character(scalar))
                }
                if let decoded {
                    result += decoded
                    rest = after[after.index(after: semi)...]
                    continue
                }
            }
            result += "&"
            rest = after
        }
        return result + rest
    }
}
