#!/usr/bin/env bash
# Generates every artifact derived from proto/ under the folder given as $1 (default: the repository):
#   Sources/SparkProto/Generated   Swift messages (protoc-gen-swift), grpc-swift-2 stubs, SparkWire method table
#   clients/c/gen                  C messages (protoc-c)
#   clients/python/gen             Python messages (protoc --python_out)
# The plugins are built from the pinned packages in tools/protoc-plugins, in their own scratch folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
scratch="$root/.build-protoc"

(cd "$root/tools/protoc-plugins" && for p in protoc-gen-swift protoc-gen-grpc-swift-2 protoc-gen-sparkops; do
    swift build --scratch-path "$scratch" --product "$p" >&2
done)
bin=$(cd "$root/tools/protoc-plugins" && swift build --scratch-path "$scratch" --show-bin-path)

cd "$root/proto"
mapfile -t protos < <(find sparkops -name '*.proto' | LC_ALL=C sort)
mapfile -t services < <(grep -l '^service ' "${protos[@]}" | LC_ALL=C sort)

swift_out="$out/Sources/SparkProto/Generated"
rm -rf "$swift_out" "$out/clients/c/gen" "$out/clients/python/gen"
mkdir -p "$swift_out" "$out/clients/c/gen" "$out/clients/python/gen"

protoc -I . \
    --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
    --swift_out="$swift_out" --swift_opt=Visibility=Public \
    "${protos[@]}"
protoc -I . \
    --plugin=protoc-gen-grpc-swift-2="$bin/protoc-gen-grpc-swift-2" \
    --grpc-swift-2_out="$swift_out" --grpc-swift-2_opt=Visibility=Public,Client=true,Server=true \
    "${services[@]}"
protoc -I . \
    --plugin=protoc-gen-sparkops="$bin/protoc-gen-sparkops" \
    --sparkops_out="$swift_out" \
    "${protos[@]}"

# The polyglot clients need the wire, health and echo messages only.
client_protos=(sparkops/wire/v1/frame.proto sparkops/health/v1/health.proto sparkops/testing/v1/echo.proto)
protoc-c -I . --c_out="$out/clients/c/gen" "${client_protos[@]}"
protoc -I . --python_out="$out/clients/python/gen" "${client_protos[@]}"
