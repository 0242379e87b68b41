using System.Text.RegularExpressions;

namespace Nightlight.Cli;

/// <summary>
/// Turns a failed setting's message, which names its configuration key (<c>Device:Interval '5sec' ...</c>) or its
/// options class (<c>DataAnnotation validation failed for 'BrokerOptions' ...</c>), into the line a user can act on:
/// the flag they typed, the value and what is allowed (<c>--mqtt-port '99999': must be between 1 and 65535</c>).
/// </summary>
/// <param name="flags">Configuration key to the flag that sets it, for the command that ran.</param>
/// <param name="value">The value a key has.</param>
sealed partial class SettingNames(IReadOnlyDictionary<string, string> flags, Func<string, string?> value)
{
    /// <summary>The line for one failure; <paramref name="optionsType"/> is the class a validation failure names.</summary>
    public string Explain(string message, string? optionsType)
    {
        var annotation = AnnotationFailure().Match(message);
        if (annotation.Success)
        {
            optionsType ??= annotation.Groups["type"].Value;
            message = annotation.Groups["error"].Value;
            if (FieldText().Match(message) is { Success: true } field)
            {
                var key = KeyOf(optionsType, field.Groups["member"].Value);
                return $"{Name(key)} '{value(key)}': {field.Groups["rule"].Value}";
            }
        }
        if (KeyedText().Match(message) is { Success: true } keyed)
        {
            var key = keyed.Groups["key"].Value;
            var given = keyed.Groups["value"].Success ? keyed.Groups["value"].Value : value(key);
            var rest = keyed.Groups["rest"].Value.TrimStart(':', ' ');
            return string.IsNullOrEmpty(given) ? $"{Name(key)} {rest}" : $"{Name(key)} '{given}' {rest}";
        }
        return message;
    }

    string Name(string key) => flags.TryGetValue(key, out var flag) ? flag : key;

    /// <summary>The key of a member of an options class: the flag's key whose section begins the class name, else Section:Member.</summary>
    string KeyOf(string optionsType, string member)
    {
        foreach (var key in flags.Keys)
        {
            var colon = key.LastIndexOf(':');
            if (colon > 0 && key[(colon + 1)..] == member && optionsType.StartsWith(key[..key.IndexOf(':')], StringComparison.Ordinal))
            {
                return key;
            }
        }
        var section = optionsType.EndsWith("HostOptions", StringComparison.Ordinal) ? optionsType[..^"HostOptions".Length]
            : optionsType.EndsWith("Options", StringComparison.Ordinal) ? optionsType[..^"Options".Length] : optionsType;
        return $"{section}:{member}";
    }

    [GeneratedRegex(@"^DataAnnotation validation failed for '(?<type>\w+)' members: '\w*' with the error: '(?<error>.*)'\.?$")]
    private static partial Regex AnnotationFailure();

    [GeneratedRegex(@"^The field (?<member>\w+) (?<rule>.*?)\.?$")]
    private static partial Regex FieldText();

    [GeneratedRegex(@"^(?<key>[A-Z]\w*(?::\w+)+)(?: '(?<value>[^']*)')?(?<rest>[: ].*)$")]
    private static partial Regex KeyedText();
}
