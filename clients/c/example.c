/*
 * sparkwire-example: calls Health/Check, EchoService/Get and EchoService/Expand over SparkWire.
 *
 *   sparkwire-example --host 127.0.0.1 --port 7070 --certs DIR [--identity gateway] [--server-identity echo]
 *
 * Start a server with `sparkops wire echo-server --certs DIR`. Prints one line per result and
 * exits non-zero if any call fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparkwire.h"
#include "sparkops/health/v1/health.pb-c.h"
#include "sparkops/testing/v1/echo.pb-c.h"

static int print_word(void *context, const uint8_t *message, size_t length) {
    (void)context;
    Sparkops__Testing__V1__EchoResponse *response = sparkops__testing__v1__echo_response__unpack(NULL, length, message);
    if (response == NULL) return 1;
    printf("expand %u %s\n", response->index, response->text);
    sparkops__testing__v1__echo_response__free_unpacked(response, NULL);
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *certs = NULL, *identity = "gateway", *server_identity = "echo";
    int port = 7070;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0) host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0) port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--certs") == 0) certs = argv[i + 1];
        else if (strcmp(argv[i], "--identity") == 0) identity = argv[i + 1];
        else if (strcmp(argv[i], "--server-identity") == 0) server_identity = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (certs == NULL) {
        fprintf(stderr, "usage: %s --host HOST --port PORT --certs DIR [--identity NAME] [--server-identity NAME]\n", argv[0]);
        return 2;
    }
    char trust[1024], cert[1024], key[1024], err[512];
    snprintf(trust, sizeof trust, "%s/trust.pem", certs);
    snprintf(cert, sizeof cert, "%s/%s.pem", certs, identity);
    snprintf(key, sizeof key, "%s/%s.key", certs, identity);
    sparkwire_options options = {host, port, trust, cert, key, server_identity, 8};
    sparkwire_conn *conn = sparkwire_connect(&options, err, sizeof err);
    if (conn == NULL) {
        fprintf(stderr, "connect: %s\n", err);
        return 1;
    }
    int failures = 0;
    sparkwire_status status;

    /* Health/Check */
    Sparkops__Health__V1__HealthCheckRequest check = SPARKOPS__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    uint8_t check_bytes[64];
    size_t check_len = sparkops__health__v1__health_check_request__pack(&check, check_bytes);
    uint8_t *reply = NULL;
    size_t reply_len = 0;
    if (sparkwire_unary(conn, "/sparkops.health.v1.Health/Check", 5000000, check_bytes, check_len, &reply, &reply_len, &status) != 0 || status.code != 0) {
        fprintf(stderr, "health: status %u %s\n", status.code, status.message);
        failures++;
    } else {
        Sparkops__Health__V1__HealthCheckResponse *health = sparkops__health__v1__health_check_response__unpack(NULL, reply_len, reply);
        printf("health %s\n", health && health->status == SPARKOPS__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING_STATUS_SERVING ? "SERVING" : "NOT_SERVING");
        if (health) sparkops__health__v1__health_check_response__free_unpacked(health, NULL);
        free(reply);
    }

    /* EchoService/Get */
    Sparkops__Testing__V1__EchoRequest request = SPARKOPS__TESTING__V1__ECHO_REQUEST__INIT;
    request.text = "hello from C";
    uint8_t payload[3] = {1, 2, 3};
    request.payload.data = payload;
    request.payload.len = sizeof payload;
    uint8_t request_bytes[256];
    size_t request_len = sparkops__testing__v1__echo_request__pack(&request, request_bytes);
    if (sparkwire_unary(conn, "/sparkops.testing.v1.EchoService/Get", 5000000, request_bytes, request_len, &reply, &reply_len, &status) != 0 || status.code != 0) {
        fprintf(stderr, "get: status %u %s\n", status.code, status.message);
        failures++;
    } else {
        Sparkops__Testing__V1__EchoResponse *response = sparkops__testing__v1__echo_response__unpack(NULL, reply_len, reply);
        printf("get %s %zu\n", response ? response->text : "(unparsable)", response ? response->payload.len : 0);
        if (response) sparkops__testing__v1__echo_response__free_unpacked(response, NULL);
        free(reply);
    }

    /* EchoService/Expand: more words than the window of 8, so window updates are exercised. */
    request.text = "one two three four five six seven eight nine ten eleven twelve";
    request.payload.len = 0;
    request_len = sparkops__testing__v1__echo_request__pack(&request, request_bytes);
    if (sparkwire_server_streaming(conn, "/sparkops.testing.v1.EchoService/Expand", 5000000, request_bytes, request_len, print_word, NULL, &status) != 0 || status.code != 0) {
        fprintf(stderr, "expand: status %u %s\n", status.code, status.message);
        failures++;
    }

    /* An unknown method ends with UNIMPLEMENTED (12). */
    if (sparkwire_unary(conn, "/sparkops.testing.v1.EchoService/Nope", 0, request_bytes, request_len, &reply, &reply_len, &status) != 0) {
        failures++;
    } else {
        printf("unknown-method status %u\n", status.code);
    }

    sparkwire_close(conn);
    return failures == 0 ? 0 : 1;
}
