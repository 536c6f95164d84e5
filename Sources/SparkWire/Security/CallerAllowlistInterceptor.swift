public import GRPCCore

/// Decides which services may call which methods, by the identity in the caller's certificate.
///
/// Rules are looked up by method path (`/sparkops.budget.v1.BudgetService/Reserve`), then by
/// service (`sparkops.budget.v1.BudgetService`), then the default. `"*"` allows any authenticated
/// caller. A caller outside the rule gets PERMISSION_DENIED; a caller without a certificate
/// identity gets UNAUTHENTICATED.
///
/// The end user's principal travels in `sparkops-principal` metadata; only callers listed in
/// `principalSetters` may send it, so that a compromised service cannot act as any user.
///
/// ```swift
/// let allowlist = CallerAllowlist(
///     methods: ["/sparkops.budget.v1.BudgetService/Reserve": ["run"]],
///     services: ["sparkops.budget.v1.BudgetService": ["gateway", "run"]],
///     defaultCallers: ["gateway"],
///     principalSetters: ["gateway"]
/// )
/// let server = GRPCServer(transport: transport, services: [budget], interceptors: [CallerAllowlistInterceptor(allowlist)])
/// ```
public struct CallerAllowlist: Sendable, Hashable {
    public var methods: [String: Set<String>]
    public var services: [String: Set<String>]
    /// Callers of methods no rule names; empty denies them.
    public var defaultCallers: Set<String>
    /// Callers trusted to assert the end user's principal.
    public var principalSetters: Set<String>

    public init(
        methods: [String: Set<String>] = [:],
        services: [String: Set<String>] = [:],
        defaultCallers: Set<String> = [],
        principalSetters: Set<String> = []
    ) {
        self.methods = methods
        self.services = services
        self.defaultCallers = defaultCallers
        self.principalSetters = principalSetters
    }

    /// The callers allowed to call `descriptor`.
    public func callers(of descriptor: MethodDescriptor) -> Set<String> {
        let path = "/\(descriptor.service.fullyQualifiedService)/\(descriptor.method)"
        return self.methods[path] ?? self.services[descriptor.service.fullyQualifiedService] ?? self.defaultCallers
    }

    /// Nil when `identity` may make the call with `metadata`, else the error to answer.
    public func check(identity: String?, descriptor: MethodDescriptor, metadata: Metadata) -> RPCError? {
        let path = "/\(descriptor.service.fullyQualifiedService)/\(descriptor.method)"
        guard let identity else {
            return RPCError(code: .unauthenticated, message: "\(path) requires a client certificate")
        }
        let allowed = self.callers(of: descriptor)
        guard allowed.contains("*") || allowed.contains(identity) else {
            return RPCError(code: .permissionDenied, message: "caller \(identity.debugDescription) may not call \(path)")
        }
        if metadata[Self.principalKey].first(where: { _ in true }) != nil, !self.principalSetters.contains(identity) {
            return RPCError(
                code: .permissionDenied,
                message: "caller \(identity.debugDescription) may not assert \(Self.principalKey)"
            )
        }
        return nil
    }

    /// The metadata key that carries the end user's principal.
    public static let principalKey = "sparkops-principal-bin"
}

/// A server interceptor enforcing a ``CallerAllowlist`` on every call.
public struct CallerAllowlistInterceptor: ServerInterceptor {
    public let allowlist: CallerAllowlist
    private let identity: @Sendable (ServerContext) -> String?

    /// - Parameter identity: How to read the caller's identity; by default its SparkWire certificate.
    public init(
        _ allowlist: CallerAllowlist,
        identity: @escaping @Sendable (ServerContext) -> String? = { $0.sparkWirePeer?.identity }
    ) {
        self.allowlist = allowlist
        self.identity = identity
    }

    public func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>,
        context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        if let error = self.allowlist.check(
            identity: self.identity(context),
            descriptor: context.descriptor,
            metadata: request.metadata
        ) {
            throw error
        }
        return try await next(request, context)
    }
}

extension CallerAllowlistInterceptor: SparkWireUnaryInterceptor {
    public func intercept(
        request: SparkWireUnaryRequest,
        context: ServerContext,
        next: (SparkWireUnaryRequest, ServerContext) async throws -> SparkWireUnaryResponse
    ) async throws -> SparkWireUnaryResponse {
        if let error = self.allowlist.check(identity: self.identity(context), descriptor: context.descriptor, metadata: request.metadata) {
            throw error
        }
        return try await next(request, context)
    }
}
