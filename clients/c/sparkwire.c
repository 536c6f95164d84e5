/* sparkwire: see sparkwire.h and docs/wire-protocol.md. */
#include "sparkwire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "sparkops/wire/v1/frame.pb-c.h"

#define SPARKWIRE_ALPN "sparkwire/1"
#define SPARKWIRE_MAX_FRAME (4u * 1024u * 1024u)

struct sparkwire_conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint32_t next_stream_id;
    uint32_t window;            /* messages we let the server send per stream */
    uint32_t peer_max_frame;    /* from the server's settings */
};

static void set_error(char *err, size_t len, const char *what) {
    unsigned long code = ERR_get_error();
    if (code != 0) {
        char detail[256];
        ERR_error_string_n(code, detail, sizeof detail);
        snprintf(err, len, "%s: %s", what, detail);
    } else {
        snprintf(err, len, "%s", what);
    }
}

static int write_all(sparkwire_conn *conn, const uint8_t *bytes, size_t len) {
    while (len > 0) {
        int n = SSL_write(conn->ssl, bytes, (int)len);
        if (n <= 0) return -1;
        bytes += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(sparkwire_conn *conn, uint8_t *bytes, size_t len) {
    while (len > 0) {
        int n = SSL_read(conn->ssl, bytes, (int)len);
        if (n <= 0) return -1;
        bytes += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes one frame: the 4-byte big-endian length, then the packed Frame. */
static int send_frame(sparkwire_conn *conn, const Sparkops__Wire__V1__Frame *frame) {
    size_t size = sparkops__wire__v1__frame__get_packed_size(frame);
    uint8_t *buffer = malloc(size + 4);
    if (buffer == NULL) return -1;
    uint32_t prefix = htonl((uint32_t)size);
    memcpy(buffer, &prefix, 4);
    sparkops__wire__v1__frame__pack(frame, buffer + 4);
    int result = write_all(conn, buffer, size + 4);
    free(buffer);
    return result;
}

/* Reads one frame; NULL when the connection failed or the frame is too large or malformed. */
static Sparkops__Wire__V1__Frame *read_frame(sparkwire_conn *conn) {
    uint8_t prefix[4];
    if (read_all(conn, prefix, 4) != 0) return NULL;
    uint32_t size = ((uint32_t)prefix[0] << 24) | ((uint32_t)prefix[1] << 16) | ((uint32_t)prefix[2] << 8) | prefix[3];
    if (size > SPARKWIRE_MAX_FRAME) return NULL;
    uint8_t *body = malloc(size == 0 ? 1 : size);
    if (body == NULL) return NULL;
    if (read_all(conn, body, size) != 0) {
        free(body);
        return NULL;
    }
    Sparkops__Wire__V1__Frame *frame = sparkops__wire__v1__frame__unpack(NULL, size, body);
    free(body);
    return frame;
}

/* Answers a ping; true if the frame was a connection-level frame that needs nothing else. */
static int handle_connection_frame(sparkwire_conn *conn, const Sparkops__Wire__V1__Frame *frame) {
    if (frame->stream_id != 0) return 0;
    if (frame->ping != NULL && !frame->ping->ack) {
        Sparkops__Wire__V1__Ping ack = SPARKOPS__WIRE__V1__PING__INIT;
        ack.payload = frame->ping->payload;
        ack.ack = 1;
        Sparkops__Wire__V1__Frame reply = SPARKOPS__WIRE__V1__FRAME__INIT;
        reply.ping = &ack;
        send_frame(conn, &reply);
    }
    return 1;
}

sparkwire_conn *sparkwire_connect(const sparkwire_options *options, char *err, size_t err_len) {
    sparkwire_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    conn->fd = -1;
    conn->next_stream_id = 1;
    conn->window = options->initial_window ? options->initial_window : 64;
    conn->peer_max_frame = SPARKWIRE_MAX_FRAME;

    char port[16];
    snprintf(port, sizeof port, "%d", options->port);
    struct addrinfo hints = {0}, *addresses = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int status = getaddrinfo(options->host, port, &hints, &addresses);
    if (status != 0) {
        snprintf(err, err_len, "cannot resolve %s: %s", options->host, gai_strerror(status));
        free(conn);
        return NULL;
    }
    for (struct addrinfo *address = addresses; address != NULL; address = address->ai_next) {
        conn->fd = socket(address->ai_family, address->ai_socktype, address->ai_protocol);
        if (conn->fd < 0) continue;
        if (connect(conn->fd, address->ai_addr, address->ai_addrlen) == 0) break;
        close(conn->fd);
        conn->fd = -1;
    }
    freeaddrinfo(addresses);
    if (conn->fd < 0) {
        snprintf(err, err_len, "cannot connect to %s:%d: %s", options->host, options->port, strerror(errno));
        free(conn);
        return NULL;
    }

    conn->ctx = SSL_CTX_new(TLS_client_method());
    if (conn->ctx == NULL || !SSL_CTX_set_min_proto_version(conn->ctx, TLS1_3_VERSION)) {
        set_error(err, err_len, "cannot create a TLS 1.3 context");
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(conn->ctx, options->trust_file, NULL) != 1) {
        set_error(err, err_len, "cannot load the trust bundle");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(conn->ctx, options->cert_file) != 1
        || SSL_CTX_use_PrivateKey_file(conn->ctx, options->key_file, SSL_FILETYPE_PEM) != 1) {
        set_error(err, err_len, "cannot load the client certificate or key");
        goto fail;
    }
    SSL_CTX_set_verify(conn->ctx, SSL_VERIFY_PEER, NULL);
    static const unsigned char alpn[] = {11, 's', 'p', 'a', 'r', 'k', 'w', 'i', 'r', 'e', '/', '1'};
    SSL_CTX_set_alpn_protos(conn->ctx, alpn, sizeof alpn);

    conn->ssl = SSL_new(conn->ctx);
    SSL_set_fd(conn->ssl, conn->fd);
    SSL_set_tlsext_host_name(conn->ssl, options->server_identity);
    if (SSL_set1_host(conn->ssl, options->server_identity) != 1) {
        set_error(err, err_len, "cannot set the expected server identity");
        goto fail;
    }
    if (SSL_connect(conn->ssl) != 1) {
        set_error(err, err_len, "TLS handshake failed");
        goto fail;
    }
    const unsigned char *negotiated = NULL;
    unsigned int negotiated_len = 0;
    SSL_get0_alpn_selected(conn->ssl, &negotiated, &negotiated_len);
    if (negotiated_len != strlen(SPARKWIRE_ALPN) || memcmp(negotiated, SPARKWIRE_ALPN, negotiated_len) != 0) {
        snprintf(err, err_len, "the server did not negotiate ALPN %s", SPARKWIRE_ALPN);
        goto fail;
    }

    /* Both sides open with settings; streams wait for the server's. */
    Sparkops__Wire__V1__Settings settings = SPARKOPS__WIRE__V1__SETTINGS__INIT;
    settings.version = 1;
    settings.initial_window = conn->window;
    settings.max_frame_size = SPARKWIRE_MAX_FRAME;
    Sparkops__Wire__V1__Frame frame = SPARKOPS__WIRE__V1__FRAME__INIT;
    frame.settings = &settings;
    if (send_frame(conn, &frame) != 0) {
        set_error(err, err_len, "cannot send settings (was the client certificate refused?)");
        goto fail;
    }
    for (;;) {
        Sparkops__Wire__V1__Frame *received = read_frame(conn);
        if (received == NULL) {
            set_error(err, err_len, "the connection closed before the server's settings arrived");
            goto fail;
        }
        int done = received->settings != NULL;
        if (done && received->settings->max_frame_size != 0) conn->peer_max_frame = received->settings->max_frame_size;
        handle_connection_frame(conn, received);
        sparkops__wire__v1__frame__free_unpacked(received, NULL);
        if (done) break;
    }
    return conn;

fail:
    sparkwire_close(conn);
    return NULL;
}

void sparkwire_close(sparkwire_conn *conn) {
    if (conn == NULL) return;
    if (conn->ssl != NULL && SSL_is_init_finished(conn->ssl)) {
        Sparkops__Wire__V1__GoAway go_away = SPARKOPS__WIRE__V1__GO_AWAY__INIT;
        Sparkops__Wire__V1__Frame frame = SPARKOPS__WIRE__V1__FRAME__INIT;
        frame.go_away = &go_away;
        send_frame(conn, &frame);
        SSL_shutdown(conn->ssl);
    }
    if (conn->ssl != NULL) SSL_free(conn->ssl);
    if (conn->ctx != NULL) SSL_CTX_free(conn->ctx);
    if (conn->fd >= 0) close(conn->fd);
    free(conn);
}

/* Opens a stream with one request message and end_stream: a whole request in one frame. */
static int send_request(sparkwire_conn *conn, uint32_t stream_id, const char *method, uint64_t timeout_micros,
                        const uint8_t *request, size_t request_len) {
    Sparkops__Wire__V1__Headers headers = SPARKOPS__WIRE__V1__HEADERS__INIT;
    headers.method = (char *)method;
    headers.timeout_micros = timeout_micros;
    ProtobufCBinaryData message = {request_len, (uint8_t *)request};
    Sparkops__Wire__V1__Frame frame = SPARKOPS__WIRE__V1__FRAME__INIT;
    frame.stream_id = stream_id;
    frame.headers = &headers;
    frame.n_messages = 1;
    frame.messages = &message;
    frame.end_stream = 1;
    return send_frame(conn, &frame);
}

static int grant_credit(sparkwire_conn *conn, uint32_t stream_id, uint32_t increment) {
    Sparkops__Wire__V1__WindowUpdate update = SPARKOPS__WIRE__V1__WINDOW_UPDATE__INIT;
    update.increment = increment;
    Sparkops__Wire__V1__Frame frame = SPARKOPS__WIRE__V1__FRAME__INIT;
    frame.stream_id = stream_id;
    frame.window_update = &update;
    return send_frame(conn, &frame);
}

static int cancel_stream(sparkwire_conn *conn, uint32_t stream_id) {
    Sparkops__Wire__V1__Cancel cancel = SPARKOPS__WIRE__V1__CANCEL__INIT;
    cancel.code = 1; /* CANCELLED */
    Sparkops__Wire__V1__Frame frame = SPARKOPS__WIRE__V1__FRAME__INIT;
    frame.stream_id = stream_id;
    frame.cancel = &cancel;
    return send_frame(conn, &frame);
}

/* Reads the stream's frames until its trailers (or a cancel), handing messages to on_message. */
static int read_response(sparkwire_conn *conn, uint32_t stream_id, sparkwire_message_fn on_message, void *context,
                         sparkwire_status *status) {
    uint32_t consumed = 0;
    for (;;) {
        Sparkops__Wire__V1__Frame *frame = read_frame(conn);
        if (frame == NULL) {
            status->code = 14; /* UNAVAILABLE */
            snprintf(status->message, sizeof status->message, "the connection failed");
            return -1;
        }
        if (handle_connection_frame(conn, frame)) {
            int going_away = frame->go_away != NULL && frame->go_away->last_stream_id < stream_id;
            sparkops__wire__v1__frame__free_unpacked(frame, NULL);
            if (going_away) {
                status->code = 14;
                snprintf(status->message, sizeof status->message, "the server went away before the call");
                return 0;
            }
            continue;
        }
        if (frame->stream_id != stream_id) {
            sparkops__wire__v1__frame__free_unpacked(frame, NULL);
            continue;
        }
        int stop = 0;
        for (size_t i = 0; i < frame->n_messages && !stop; i++) {
            if (on_message(context, frame->messages[i].data, frame->messages[i].len) != 0) {
                cancel_stream(conn, stream_id);
                status->code = 1;
                snprintf(status->message, sizeof status->message, "cancelled by the client");
                stop = 1;
            }
            consumed++;
        }
        if (!stop && frame->trailers == NULL && consumed >= conn->window / 2) {
            grant_credit(conn, stream_id, consumed);
            consumed = 0;
        }
        if (frame->trailers != NULL) {
            status->code = frame->trailers->code;
            snprintf(status->message, sizeof status->message, "%s", frame->trailers->message);
            stop = 1;
        } else if (frame->cancel != NULL) {
            status->code = frame->cancel->code;
            snprintf(status->message, sizeof status->message, "%s", frame->cancel->message);
            stop = 1;
        }
        sparkops__wire__v1__frame__free_unpacked(frame, NULL);
        if (stop) return 0;
    }
}

typedef struct {
    uint8_t *bytes;
    size_t len;
    int count;
} single_response;

static int keep_single(void *context, const uint8_t *message, size_t length) {
    single_response *single = context;
    if (single->count++ > 0) return 1; /* a unary call answers once */
    single->bytes = malloc(length == 0 ? 1 : length);
    if (single->bytes == NULL) return 1;
    memcpy(single->bytes, message, length);
    single->len = length;
    return 0;
}

int sparkwire_unary(sparkwire_conn *conn, const char *method, uint64_t timeout_micros,
                    const uint8_t *request, size_t request_len,
                    uint8_t **response, size_t *response_len, sparkwire_status *status) {
    uint32_t stream_id = conn->next_stream_id++;
    memset(status, 0, sizeof *status);
    if (send_request(conn, stream_id, method, timeout_micros, request, request_len) != 0) {
        status->code = 14;
        snprintf(status->message, sizeof status->message, "cannot send the request");
        return -1;
    }
    single_response single = {0};
    int result = read_response(conn, stream_id, keep_single, &single, status);
    if (result == 0 && status->code == 0 && single.count != 1) {
        status->code = 13; /* INTERNAL */
        snprintf(status->message, sizeof status->message, "a unary call returned %d messages", single.count);
    }
    if (status->code == 0) {
        *response = single.bytes;
        *response_len = single.len;
    } else {
        free(single.bytes);
    }
    return result;
}

int sparkwire_server_streaming(sparkwire_conn *conn, const char *method, uint64_t timeout_micros,
                               const uint8_t *request, size_t request_len,
                               sparkwire_message_fn on_message, void *context, sparkwire_status *status) {
    uint32_t stream_id = conn->next_stream_id++;
    memset(status, 0, sizeof *status);
    if (send_request(conn, stream_id, method, timeout_micros, request, request_len) != 0) {
        status->code = 14;
        snprintf(status->message, sizeof status->message, "cannot send the request");
        return -1;
    }
    return read_response(conn, stream_id, on_message, context, status);
}
