using System.Text;

namespace Nightlight.Cli;

/// <summary>
/// Reads what a learner types at <c>nightlight up</c> (a light level, <c>curve</c>, <c>resume</c>). Below a live status
/// line, keys are read one at a time and the line being typed is drawn at the bottom (<c>&gt; 12</c>), then said above
/// as <c>you | 120</c> on Enter: the terminal's own echo would sit on the status line and vanish at its next redraw.
/// Elsewhere (no status line, input from a pipe) it is a plain line read.
/// </summary>
sealed class TerminalPrompt(LessonOutput output)
{
    /// <summary>The next line typed, trimmed; null at the end of input.</summary>
    public string? ReadLine()
    {
        if (!output.KeepsStatus || Console.IsInputRedirected)
        {
            return Console.In.ReadLine()?.Trim();
        }
        var typed = new StringBuilder();
        while (true)
        {
            var key = Console.ReadKey(intercept: true);
            switch (key.Key)
            {
                case ConsoleKey.Enter:
                    output.ShowInput(null);
                    var line = typed.ToString().Trim();
                    if (line.Length > 0)
                    {
                        output.Say("you", line);
                    }
                    return line;
                case ConsoleKey.Backspace:
                    if (typed.Length > 0)
                    {
                        typed.Length--;
                    }
                    break;
                case ConsoleKey.Escape:
                    typed.Clear();
                    break;
                default:
                    if (!char.IsControl(key.KeyChar))
                    {
                        typed.Append(key.KeyChar);
                    }
                    break;
            }
            output.ShowInput(typed.Length > 0 ? typed.ToString() : null);
        }
    }
}
