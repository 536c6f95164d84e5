import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SparkKit

/// An HTTP/1.1 client for requests to addresses users chose (http tools): every URL, redirects
/// included, goes through the ``OutboundGuard`` first, and the connection is made to an address
/// the guard checked, never to a name resolved again, so that DNS rebinding cannot turn a checked
/// name into a private address. TLS verifies the certificate against the URL's host name.
/// Response bodies are capped while they arrive; the whole exchange, redirects included, is bounded
/// by one deadline.
struct GuardedHTTPClient: Sendable {
    struct Request: Sendable {
        var method: HTTPMethod
        var url: String
        var headers: [(String, String)]
        var body: [UInt8]?
        /// Headers that carry a secret (an auth `header` scheme's): dropped, like Authorization,
        /// when a redirect leads to another host.
        var sensitive: [String] = []
    }

    struct Response: Sendable {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
        /// The URL that answered, after redirects.
        var url: String
    }

    enum Failure: Error, Sendable {
        case refused(OutboundRefusal)
        case hostNotAllowed(String)
        case tooLarge(Int)
        case timeout
        case tooManyRedirects(Int)
        case connection(String)
    }

    let outbound: OutboundGuard
    let tls: NIOSSLContext
    let group: any EventLoopGroup

    /// `trustRoots`: PEM certificates trusted besides the system's (a private CA), or nil.
    init(outbound: OutboundGuard, extraTrustRootsPEM: String? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let pem = extraTrustRootsPEM {
            let certificates = try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))
            configuration.additionalTrustRoots = [.certificates(certificates)]
        }
        self.tls = try NIOSSLContext(configuration: configuration)
        self.outbound = outbound
        self.group = group
    }

    /// Sends the request, following up to `redirects` redirects (each checked again; the
    /// Authorization header is dropped when one leads to another host), and returns the final
    /// response with its body cut at `maxBytes` (over it: ``Failure/tooLarge``).
    func send(_ request: Request, hosts: [String], redirects: Int, maxBytes: Int, timeout: Duration) async throws(Failure) -> Response {
        let deadline = ContinuousClock.now + timeout
        var current = request
        var hops = 0
        while true {
            let target: OutboundGuard.Target
            do {
                target = try await self.outbound.check(url: current.url)
            } catch {
                throw .refused(error)
            }
            guard Self.host(target.host, isIn: hosts) else { throw .hostNotAllowed(target.host) }
            let response = try await self.exchange(current, target: target, maxBytes: maxBytes, deadline: deadline)
            guard [301, 302, 303, 307, 308].contains(response.status),
                  let location = response.headers.first(where: { $0.0.lowercased() == "location" })?.1
            else {
                return response
            }
            guard hops < redirects else {
                if redirects == 0 { return response }
                throw .tooManyRedirects(redirects)
            }
            hops += 1
            guard let next = URL(string: location, relativeTo: URL(string: current.url))?.absoluteURL.absoluteString else {
                throw .connection("the redirect to \(location.debugDescription) is not a URL")
            }
            let nextHost = URLComponents(string: next)?.host?.lowercased()
            if nextHost != target.host.lowercased() {
                let sensitive = Set(current.sensitive.map { $0.lowercased() })
                current.headers.removeAll { $0.0.lowercased() == "authorization" || $0.0.lowercased() == "cookie" || sensitive.contains($0.0.lowercased()) }
            }
            if response.status == 303 || ((response.status == 301 || response.status == 302) && current.method == .POST) {
                current.method = .GET
                current.body = nil
                current.headers.removeAll { $0.0.lowercased() == "content-type" }
            }
            current.url = next
        }
    }

    /// `hosts` empty allows every host; otherwise the host must be one of them, or under a
    /// `*.example.com` entry.
    static func host(_ host: String, isIn hosts: [String]) -> Bool {
        guard !hosts.isEmpty else { return true }
        let name = host.lowercased()
        return hosts.contains { entry in
            let allowed = entry.lowercased()
            if allowed.hasPrefix("*.") { return name.hasSuffix(allowed.dropFirst()) }
            return name == allowed
        }
    }

    private func exchange(_ request: Request, target: OutboundGuard.Target, maxBytes: Int, deadline: ContinuousClock.Instant) async throws(Failure) -> Response {
        var lastError = "no address"
        for address in target.addresses {
            guard ContinuousClock.now < deadline else { throw .timeout }
            let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
            do {
                channel = try await self.connect(to: address, target: target, deadline: deadline)
            } catch let failure as Failure {
                throw failure
            } catch {
                lastError = "\(error)"
                continue
            }
            return try await self.run(request, on: channel, target: target, maxBytes: maxBytes, deadline: deadline)
        }
        throw .connection("cannot connect to \(target.host):\(target.port): \(lastError)")
    }

    private func connect(to address: SocketAddress, target: OutboundGuard.Target, deadline: ContinuousClock.Instant) async throws -> NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> {
        let remaining = deadline - ContinuousClock.now
        let milliseconds = max(1, min(10_000, remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000))
        let tls = target.scheme == "https" ? self.tls : nil
        let serverName = IPAddress(target.host) == nil ? target.host : nil
        return try await ClientBootstrap(group: self.group)
            .connectTimeout(.milliseconds(milliseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(to: address) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
    }

    private func run(
        _ request: Request,
        on channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>,
        target: OutboundGuard.Target,
        maxBytes: Int,
        deadline: ContinuousClock.Instant
    ) async throws(Failure) -> Response {
        let url = URLComponents(string: request.url)
        var path = url?.percentEncodedPath ?? "/"
        if path.isEmpty { path = "/" }
        if let query = url?.percentEncodedQuery { path += "?\(query)" }
        var headers = HTTPHeaders(request.headers)
        let defaultPort = target.scheme == "https" ? 443 : 80
        let authorityHost = target.host.contains(":") ? "[\(target.host)]" : target.host
        headers.replaceOrAdd(name: "Host", value: target.port == defaultPort ? authorityHost : "\(authorityHost):\(target.port)")
        headers.replaceOrAdd(name: "Connection", value: "close")
        if headers["User-Agent"].isEmpty { headers.add(name: "User-Agent", value: "SparkOps-http-tool/1") }
        if let body = request.body {
            headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
        } else if request.method == .POST || request.method == .PUT || request.method == .PATCH {
            headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        let head = HTTPRequestHead(version: .http1_1, method: request.method, uri: path, headers: headers)
        let channelHandle = channel.channel
        let method = request.method
        let outcome: Result<Response, Failure> = await withTaskGroup(of: Result<Response, Failure>?.self) { group in
            group.addTask {
                do {
                    return try await channel.executeThenClose { inbound, outbound in
                        // One write for the whole request; a server may answer and close as soon as
                        // it has the head, so a failed write is not yet a failed exchange: the
                        // answer, when there is one, is read all the same.
                        var parts: [HTTPClientRequestPart] = [.head(head)]
                        if let body = request.body { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                        parts.append(.end(nil))
                        var writeError: (any Error)?
                        do {
                            try await outbound.write(contentsOf: parts)
                        } catch {
                            writeError = error
                        }
                        var status = 0
                        var responseHeaders: [(String, String)] = []
                        var collected: [UInt8] = []
                        for try await part in inbound {
                            switch part {
                            case .head(let responseHead):
                                status = Int(responseHead.status.code)
                                responseHeaders = responseHead.headers.map { ($0.name, $0.value) }
                                if method == .HEAD { return .success(Response(status: status, headers: responseHeaders, body: [], url: request.url)) }
                            case .body(let buffer):
                                guard collected.count + buffer.readableBytes <= maxBytes else { return .failure(.tooLarge(maxBytes)) }
                                collected += buffer.readableBytesView
                            case .end:
                                return .success(Response(status: status, headers: responseHeaders, body: collected, url: request.url))
                            }
                        }
                        guard status != 0 else {
                            return .failure(.connection("\(target.host) closed the connection without answering\(writeError.map { " (\($0))" } ?? "")"))
                        }
                        return .success(Response(status: status, headers: responseHeaders, body: collected, url: request.url))
                    }
                } catch {
                    return .failure(.connection("\(error)"))
                }
            }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return Task.isCancelled ? nil : .failure(.timeout)
            }
            defer { channelHandle.close(promise: nil) }
            while let next = await group.next() {
                if let result = next {
                    group.cancelAll()
                    return result
                }
            }
            return .failure(.timeout)
        }
        return try outcome.get()
    }
}
