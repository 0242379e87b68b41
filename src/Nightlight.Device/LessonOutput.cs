namespace Nightlight.Device;

/// <summary>
/// Where the lesson-style lines go (<c>Message received: {"light": 412}</c>): the lines a learner reads, kept apart
/// from diagnostic logs. Each line is written whole, so roles sharing one console never interleave mid-line.
/// </summary>
public sealed class LessonOutput(TextWriter writer)
{
    static readonly Lock Gate = new();

    /// <summary>Writes nowhere.</summary>
    public static LessonOutput None { get; } = new(TextWriter.Null);

    /// <summary>Writes one line, prefixed by who says it (<c>server</c>, <c>device nightlight1</c>).</summary>
    public void Say(string who, string line)
    {
        if (ReferenceEquals(writer, TextWriter.Null))
        {
            return;
        }
        lock (Gate)
        {
            writer.WriteLine($"{who,-18} | {line}");
            writer.Flush();
        }
    }
}
