// libhiredis (Debian: libhiredis-dev), used only as a RESP codec: redisReader parses replies,
// redisFormatCommandArgv encodes commands. SparkOps does its own I/O with SwiftNIO.
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
