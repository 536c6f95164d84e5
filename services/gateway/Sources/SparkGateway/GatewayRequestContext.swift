public import Hummingbird
public import HummingbirdWebSocket
import NIOCore

/// Per-request state of the gateway: the request id, the client's address and, once
/// authenticated, the principal.
public struct GatewayRequestContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<Self>
    /// The peer's address (the client, or a proxy in front of it).
    public let peerAddress: String
    public var requestID: String = ""
    public var clientIP: String = ""
    /// The per-IP rate limit is left to the route's dispatcher (see `RequestMiddleware`).
    var ipLimitDeferred = false
    public var maxUploadSize: Int { GatewayRequestContext.maxBodyBytes }

    /// Set once at startup from the gateway's configuration.
    nonisolated(unsafe) static var maxBodyBytes = 1 << 20

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.webSocket = .init()
        switch source.channel.remoteAddress {
        case .some(.v4(let address)): self.peerAddress = address.host
        case .some(.v6(let address)): self.peerAddress = address.host
        default: self.peerAddress = ""
        }
    }
}
