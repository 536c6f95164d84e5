import Foundation

/// Lines for the person at the terminal (not logs): written at once, so that they appear in order
/// and without delay also when standard output is a file or a pipe, where `print` buffers.
public enum Console {
    public static func say(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }
}
