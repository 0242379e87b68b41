namespace Nightlight.Server.Storage;

/// <summary>Configuration section <c>Data</c>.</summary>
public sealed class DataOptions
{
    public const string Section = "Data";

    /// <summary>Where the SQLite file lives: <c>DIRECTORY/nightlight.db</c>.</summary>
    public string Directory { get; set; } = "./nightlight-data";
}
