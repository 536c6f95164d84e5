#!/usr/bin/env bash
# Generates every artifact derived from proto/ under the folder given as $1 (default: the repository):
#   Sources/SparkProto/Generated   Swift messages (protoc-gen-swift), grpc-swift-2 stubs, SparkWire method table
#   clients/c/gen                  C messages (protoc-c)
#   clients/python/gen             Python messages (protoc --python_out)
#   docs/api/openapi.json          the gateway's OpenAPI 3.1 document
#   tools/protoc-plugins/…/Generated  http.proto for protoc-gen-sparkops itself
# The plugins are built from the pinned packages in tools/protoc-plugins, in their own scratch folder.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
scratch="$root/.build-protoc"

plugins="$root/tools/protoc-plugins"
build_plugin() { (cd "$plugins" && swift build --scratch-path "$scratch" --product "$1" >&2); }
build_plugin protoc-gen-swift
build_plugin protoc-gen-grpc-swift-2
bin=$(cd "$plugins" && swift build --scratch-path "$scratch" --show-bin-path)

# protoc-gen-sparkops reads the (sparkops.api.v1.http) option through Swift generated from
# http.proto: generate that first (into $out, and into the plugin's sources when $out is the repository).
plugin_gen="$out/tools/protoc-plugins/Sources/protoc-gen-sparkops/Generated"
rm -rf "$plugin_gen" && mkdir -p "$plugin_gen"
protoc -I "$root/proto" --plugin=protoc-gen-swift="$bin/protoc-gen-swift" --swift_out="$plugin_gen" \
    sparkops/api/v1/http.proto
build_plugin protoc-gen-sparkops

cd "$root/proto"
mapfile -t protos < <(find sparkops -name '*.proto' | LC_ALL=C sort)
mapfile -t services < <(grep -l '^service ' "${protos[@]}" | LC_ALL=C sort)

swift_out="$out/Sources/SparkProto/Generated"
rm -rf "$swift_out" "$out/clients/c/gen" "$out/clients/python/gen" "$out/docs/api"
mkdir -p "$swift_out" "$out/clients/c/gen" "$out/clients/python/gen" "$out/docs/api"

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
protoc -I . \
    --plugin=protoc-gen-sparkops="$bin/protoc-gen-sparkops" \
    --sparkops_out=openapi:"$out/docs/api" \
    "${protos[@]}"

# The polyglot clients need the wire, health and echo messages only.
client_protos=(sparkops/wire/v1/frame.proto sparkops/health/v1/health.proto sparkops/testing/v1/echo.proto)
protoc-c -I . --c_out="$out/clients/c/gen" "${client_protos[@]}"
protoc -I . --python_out="$out/clients/python/gen" "${client_protos[@]}"
