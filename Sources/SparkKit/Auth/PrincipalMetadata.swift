public import GRPCCore
public import SparkProto
import SparkWire
import SwiftProtobuf

/// The end user a call acts for, as the gateway attaches it to calls (`sparkops-principal-bin`).
///
/// Services trust it only from callers the allowlist lets set it (`CallerAllowlist.principalSetters`).
extension Sparkops_Common_V1_Principal {
    public static let metadataKey = CallerAllowlist.principalKey

    /// Reads the principal from request metadata; nil when absent.
    public init?(metadata: Metadata) throws {
        guard let bytes = metadata[binaryValues: Self.metadataKey].first(where: { _ in true }) else { return nil }
        self = try Sparkops_Common_V1_Principal(serializedBytes: bytes)
    }

    /// The principal as metadata to attach to a call.
    public var metadata: Metadata {
        var metadata = Metadata()
        metadata.addBinary((try? self.serializedBytes()) ?? [], forKey: Self.metadataKey)
        return metadata
    }

    /// The principal of a request, or UNAUTHENTICATED.
    public static func required(_ metadata: Metadata) throws -> Sparkops_Common_V1_Principal {
        do {
            guard let principal = try Sparkops_Common_V1_Principal(metadata: metadata), principal.kind != .unspecified else {
                throw RPCError(code: .unauthenticated, message: "the call carries no principal")
            }
            return principal
        } catch let error as RPCError {
            throw error
        } catch {
            throw RPCError(code: .invalidArgument, message: "the principal metadata does not parse")
        }
    }
}
