/*
 * sparkwire: a small C client for SparkWire, the SparkOps service-to-service protocol.
 *
 * Frames are sparkops.wire.v1.Frame messages (protobuf-c) behind a 4-byte big-endian length,
 * over TLS 1.3 with mutual authentication and ALPN "sparkwire/1" (OpenSSL). docs/wire-protocol.md
 * is the specification this follows.
 *
 * A connection carries one call at a time in this client; a call is a unary request or a
 * unary request with a streamed response.
 */
#ifndef SPARKWIRE_H
#define SPARKWIRE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sparkwire_conn sparkwire_conn;

/* Options for sparkwire_connect. */
typedef struct {
    const char *host;            /* address or name to connect to */
    int port;
    const char *trust_file;      /* PEM bundle of trusted CAs (trust.pem) */
    const char *cert_file;       /* this client's certificate (PEM) */
    const char *key_file;        /* its private key (PEM) */
    const char *server_identity; /* DNS name the server's certificate must carry, such as "echo" */
    uint32_t initial_window;     /* messages per stream before a window update; 0 for 64 */
} sparkwire_options;

/* The outcome of a call: a canonical gRPC status code (0 is OK) and a message. */
typedef struct {
    uint32_t code;
    char message[512];
} sparkwire_status;

/* Connects, completes the TLS handshake and exchanges settings. Returns NULL and fills err on failure. */
sparkwire_conn *sparkwire_connect(const sparkwire_options *options, char *err, size_t err_len);

/* Sends GoAway and closes the connection. */
void sparkwire_close(sparkwire_conn *conn);

/*
 * A unary call to method ("/package.Service/Method") with a serialized request. On success
 * (return 0) *response holds the serialized response (free it with free()) and status->code is 0;
 * a call that ended with another status also returns 0 with status filled in. -1 means the
 * connection failed; status->message says why.
 */
int sparkwire_unary(sparkwire_conn *conn, const char *method, uint64_t timeout_micros,
                    const uint8_t *request, size_t request_len,
                    uint8_t **response, size_t *response_len, sparkwire_status *status);

/* Called once per streamed response message; return non-zero to cancel the call. */
typedef int (*sparkwire_message_fn)(void *context, const uint8_t *message, size_t length);

/* A call with one request and a stream of responses, delivered to on_message as they arrive. */
int sparkwire_server_streaming(sparkwire_conn *conn, const char *method, uint64_t timeout_micros,
                               const uint8_t *request, size_t request_len,
                               sparkwire_message_fn on_message, void *context, sparkwire_status *status);

#endif
